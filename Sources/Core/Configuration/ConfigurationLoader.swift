import FoundationEssentials
import Glibc
import TOMLKit

/// Reads `agent.toml` into an ``AgentConfiguration``, strictly.
///
/// Unknown sections and keys are errors (a typo must not silently fall back to a default), and every
/// error names the key and, where the text shows it, the line.
public enum ConfigurationLoader {
    /// Where the daemon and the CLI look when `--config` is not given.
    public static let defaultPath = "/etc/definite-agent/agent.toml"

    /// Loads the file at `path`.
    public static func load(path: String) throws(ConfigurationError) -> AgentConfiguration {
        let text: String?
        do {
            text = try FileSystem.text(of: path)
        } catch {
            throw ConfigurationError(.unreadableFile, file: path, "cannot read the configuration file: \(error)")
        }
        guard let text else { throw ConfigurationError(.syntax, file: path, "invalid TOML: the file is not valid UTF-8") }
        return try parse(text, file: path)
    }

    /// Parses TOML text; `file` only labels errors.
    public static func parse(_ text: String, file: String? = nil) throws(ConfigurationError) -> AgentConfiguration {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(.syntax, line: error.source.begin.line, file: file, "invalid TOML: \(error.description)")
        } catch {
            throw ConfigurationError(.syntax, file: file, "invalid TOML: \(error)")
        }
        let locator = LineLocator(text: text)
        var config = AgentConfiguration()
        do {
            try read(root, into: &config, locator: locator)
            try validate(config, locator: locator)
        } catch var error {
            error.file = file
            throw error
        }
        if config.api.keyFile != nil {
            config.api.keyFileLocation = ConfigurationLocation(file: file, line: locator.line(section: "api", key: "key_file"))
        }
        return config
    }

    // MARK: Reading

    private static let sections: Set<String> = ["api", "spool", "intake", "table", "batch", "retry", "service", "metrics", "log"]

    private static func read(_ root: TOMLTable, into config: inout AgentConfiguration, locator: LineLocator) throws(ConfigurationError) {
        for key in root.keys where !sections.contains(key) {
            throw ConfigurationError(
                .unknownKey, key: key, line: locator.line(section: nil, key: key) ?? locator.headerLine(key),
                "unknown section or key (known sections: \(sections.sorted().joined(separator: ", ")))")
        }
        if var api = try Section(root, "api", locator) {
            config.api.url = try api.string("url") ?? config.api.url
            config.api.keyFile = try api.string("key_file") ?? config.api.keyFile
            config.api.timeout = try api.duration("timeout") ?? config.api.timeout
            try api.finish()
        }
        if var spool = try Section(root, "spool", locator) {
            config.spool.path = try spool.string("path") ?? config.spool.path
            config.spool.maxBytes = try spool.size("max_bytes") ?? config.spool.maxBytes
            config.spool.durability = try spool.choice("durability") ?? config.spool.durability
            switch try spool.sizeOrAutomatic("disk_reserve") {
            case .automatic: config.spool.diskReserve = nil
            case .size(let size): config.spool.diskReserve = size
            case nil: break
            }
            config.spool.group = try spool.string("group") ?? config.spool.group
            try spool.finish()
        }
        if var intake = try Section(root, "intake", locator) {
            config.intake.socket = try intake.string("socket") ?? config.intake.socket
            config.intake.socketMode = try intake.fileMode("socket_mode") ?? config.intake.socketMode
            config.intake.defaultTable = try intake.string("default_table") ?? config.intake.defaultTable
            config.intake.maxLineBytes = try intake.size("max_line_bytes") ?? config.intake.maxLineBytes
            config.intake.allowUIDs = try intake.ids("allow_uids") ?? config.intake.allowUIDs
            config.intake.allowGIDs = try intake.ids("allow_gids") ?? config.intake.allowGIDs
            config.intake.httpSocket = try intake.string("http_socket") ?? config.intake.httpSocket
            config.intake.httpListen = try intake.string("http_listen") ?? config.intake.httpListen
            config.intake.httpAllowRemote = try intake.bool("http_allow_remote") ?? config.intake.httpAllowRemote
            config.intake.httpToken = try intake.string("http_token") ?? config.intake.httpToken
            config.intake.datagramSocket = try intake.string("datagram_socket") ?? config.intake.datagramSocket
            config.intake.waitTimeout = try intake.duration("wait_timeout") ?? config.intake.waitTimeout
            try intake.finish()
        }
        if let tables = root["table"] {
            guard let array = tables.array else {
                throw ConfigurationError(.wrongType, key: "table", line: locator.headerLine("table"),
                                         "must be an array of tables, written [[table]]")
            }
            for index in array.indices {
                guard let table = array[index].table else {
                    throw ConfigurationError(.wrongType, key: "table", "each [[table]] entry must be a table")
                }
                var entry = Section(table, name: "table", occurrence: index, locator)
                guard let name = try entry.string("name") else {
                    throw ConfigurationError(.invalidValue, key: "table.name", line: locator.arrayHeaderLine("table", occurrence: index),
                                             "every [[table]] needs a name")
                }
                let mode: AgentConfiguration.Mode = try entry.choice("mode") ?? .append
                let keys = try entry.stringArray("primary_key")
                config.tables.append(.init(name: name, mode: mode, primaryKey: keys?.first))
                if let keys, keys.count != 1 {
                    throw entry.invalid("primary_key", "must list exactly one column (composite keys are not supported by the Stream API)")
                }
                if mode == .merge, keys == nil {
                    throw entry.invalid("mode", "table \"\(name)\": mode \"merge\" needs primary_key = [\"column\"]")
                }
                if mode == .append, keys != nil {
                    throw entry.invalid("primary_key", "table \"\(name)\": primary_key applies only to mode \"merge\"")
                }
                try entry.finish()
            }
        }
        if var batch = try Section(root, "batch", locator) {
            config.batch.maxRows = try batch.int("max_rows") ?? config.batch.maxRows
            config.batch.maxBytes = try batch.size("max_bytes") ?? config.batch.maxBytes
            config.batch.linger = try batch.duration("linger") ?? config.batch.linger
            config.batch.compression = try batch.choice("compression") ?? config.batch.compression
            config.batch.gzipLevel = try batch.int("gzip_level") ?? config.batch.gzipLevel
            config.batch.format = try batch.choice("format") ?? config.batch.format
            config.batch.concurrency = try batch.int("concurrency") ?? config.batch.concurrency
            config.batch.maxInFlight = try batch.int("max_in_flight") ?? config.batch.maxInFlight
            try batch.finish()
        }
        if var retry = try Section(root, "retry", locator) {
            config.retry.initial = try retry.duration("initial") ?? config.retry.initial
            config.retry.max = try retry.duration("max") ?? config.retry.max
            config.retry.maxAge = try retry.duration("max_age") ?? config.retry.maxAge
            try retry.finish()
        }
        if var service = try Section(root, "service", locator) {
            config.service.drainTimeout = try service.duration("drain_timeout") ?? config.service.drainTimeout
            try service.finish()
        }
        if var metrics = try Section(root, "metrics", locator) {
            config.metrics.listen = try metrics.string("listen") ?? config.metrics.listen
            try metrics.finish()
        }
        if var log = try Section(root, "log", locator) {
            config.log.level = try log.choice("level", among: LogLevelName.allNames) ?? config.log.level
            config.log.format = try log.choice("format") ?? config.log.format
            try log.finish()
        }
    }

    // MARK: Validation of values that are well-typed but out of range

    package static func validate(_ config: AgentConfiguration, locator: LineLocator = LineLocator(text: "")) throws(ConfigurationError) {
        func fail(_ section: String, _ key: String, _ message: String) -> ConfigurationError {
            ConfigurationError(.invalidValue, key: "\(section).\(key)", line: locator.line(section: section, key: key), message)
        }
        let url = config.api.url
        guard url.hasPrefix("https://") || url.hasPrefix("http://"), url.count > 8 else {
            throw fail("api", "url", "\"\(url)\" is not an http:// or https:// URL")
        }
        guard config.api.timeout.milliseconds > 0 else { throw fail("api", "timeout", "must be greater than 0") }

        guard !config.spool.path.isEmpty else { throw fail("spool", "path", "must not be empty") }
        guard config.spool.maxBytes >= .mebibytes(1) else { throw fail("spool", "max_bytes", "must be at least 1MiB") }
        if let group = config.spool.group, FileSystem.groupID(named: group) == nil {
            throw fail("spool", "group", "\"\(group)\" is not a group on this machine (see `getent group`)")
        }

        guard !config.intake.socket.isEmpty else { throw fail("intake", "socket", "must not be empty") }
        // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
        guard config.intake.socket.utf8.count < 108 else {
            throw fail("intake", "socket", "path is \(config.intake.socket.utf8.count) bytes; Unix socket paths must be under 108")
        }
        if let table = config.intake.defaultTable, let problem = TableName.problem(with: table) {
            throw fail("intake", "default_table", problem)
        }
        if let path = config.intake.datagramSocket, path.isEmpty || path.utf8.count >= 108 {
            throw fail("intake", "datagram_socket", "must be a socket path under 108 bytes")
        }
        if config.intake.httpSocket.utf8.count >= 108 {
            throw fail("intake", "http_socket", "path is \(config.intake.httpSocket.utf8.count) bytes; Unix socket paths must be under 108")
        }
        if let listen = config.intake.httpListen {
            guard let (host, _) = HostPort.parse(listen) else {
                throw fail("intake", "http_listen", "\"\(listen)\" is not host:port, e.g. \"127.0.0.1:8787\"")
            }
            if !config.intake.httpAllowRemote, !HostPort.isLoopback(host) {
                throw fail("intake", "http_listen", "\(host) is not a loopback address; the local Stream API has no TLS. Set http_allow_remote = true to accept it anyway")
            }
        }
        guard config.intake.maxLineBytes >= .kibibytes(1), config.intake.maxLineBytes <= .gibibytes(1) else {
            throw fail("intake", "max_line_bytes", "must be between 1KiB and 1GiB")
        }

        var seen = Set<String>()
        for table in config.tables {
            if let problem = TableName.problem(with: table.name) { throw fail("table", "name", problem) }
            guard seen.insert(table.name).inserted else {
                throw fail("table", "name", "table \"\(table.name)\" is listed twice")
            }
        }

        guard (1...StreamAPILimits.maxRowsPerRequest).contains(config.batch.maxRows) else {
            throw fail("batch", "max_rows", "must be between 1 and \(StreamAPILimits.maxRowsPerRequest) (the Stream API's limit)")
        }
        guard config.batch.maxBytes.bytes >= 1024, config.batch.maxBytes.bytes <= StreamAPILimits.maxBodyBytes else {
            throw fail("batch", "max_bytes", "must be between 1KiB and 10MB (10000000 bytes, the Stream API's body limit)")
        }
        guard config.batch.linger.milliseconds >= 0 else { throw fail("batch", "linger", "must not be negative") }
        guard (1...9).contains(config.batch.gzipLevel) else { throw fail("batch", "gzip_level", "must be between 1 and 9") }
        guard (1...64).contains(config.batch.concurrency) else { throw fail("batch", "concurrency", "must be between 1 and 64") }
        guard (1...1024).contains(config.batch.maxInFlight) else { throw fail("batch", "max_in_flight", "must be between 1 and 1024") }

        guard config.retry.initial.milliseconds > 0 else { throw fail("retry", "initial", "must be greater than 0") }
        guard config.retry.max >= config.retry.initial else {
            throw fail("retry", "max", "must be at least retry.initial (\(config.retry.initial))")
        }
        guard config.retry.maxAge.milliseconds > 0 else { throw fail("retry", "max_age", "must be greater than 0") }
        guard config.service.drainTimeout.milliseconds >= 0 else { throw fail("service", "drain_timeout", "must not be negative") }
        if let listen = config.metrics.listen, !listen.hasPrefix("/") {
            guard HostPort.parse(listen) != nil else { throw fail("metrics", "listen", "\"\(listen)\" is neither host:port (e.g. \"127.0.0.1:9464\") nor an absolute socket path") }
        }
    }

}

/// `host:port` addresses in the configuration.
package enum HostPort {
    package static func parse(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    package static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// The log level names `[log] level` and `--log-level` accept.
public enum LogLevelName {
    public static let allNames = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
}

// MARK: - Section reading

/// Reads the keys of one TOML table, remembering which it consumed so leftovers are reported as unknown.
private struct Section {
    let table: TOMLTable
    let name: String
    let occurrence: Int?
    let locator: LineLocator
    var consumed = Set<String>()

    init?(_ root: TOMLTable, _ name: String, _ locator: LineLocator) throws(ConfigurationError) {
        guard let value = root[name] else { return nil }
        guard let table = value.table else {
            throw ConfigurationError(.wrongType, key: name, line: locator.line(section: nil, key: name), "must be a table, written [\(name)]")
        }
        self.init(table, name: name, occurrence: nil, locator)
    }

    init(_ table: TOMLTable, name: String, occurrence: Int?, _ locator: LineLocator) {
        self.table = table
        self.name = name
        self.occurrence = occurrence
        self.locator = locator
    }

    func line(_ key: String) -> Int? { locator.line(section: name, key: key, occurrence: occurrence) }

    func invalid(_ key: String, _ message: String) -> ConfigurationError {
        ConfigurationError(.invalidValue, key: "\(name).\(key)", line: line(key), message)
    }

    func wrongType(_ key: String, _ expected: String) -> ConfigurationError {
        ConfigurationError(.wrongType, key: "\(name).\(key)", line: line(key), "must be \(expected)")
    }

    mutating func value(_ key: String) -> (any TOMLValueConvertible)? {
        consumed.insert(key)
        return table[key]
    }

    mutating func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let value = value(key) else { return nil }
        guard let string = value.string else { throw wrongType(key, "a string") }
        return string
    }

    mutating func int(_ key: String) throws(ConfigurationError) -> Int? {
        guard let value = value(key) else { return nil }
        guard let int = value.int else { throw wrongType(key, "an integer") }
        return int
    }

    mutating func stringArray(_ key: String) throws(ConfigurationError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw wrongType(key, "a list of strings, e.g. [\"id\"]") }
        var strings: [String] = []
        for element in array {
            guard let string = element.string else { throw wrongType(key, "a list of strings, e.g. [\"id\"]") }
            strings.append(string)
        }
        return strings
    }

    mutating func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let flag = value.bool else { throw wrongType(key, "true or false") }
        return flag
    }

    mutating func ids(_ key: String) throws(ConfigurationError) -> [UInt32]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw wrongType(key, "a list of numeric ids, e.g. [0, 1000]") }
        var ids: [UInt32] = []
        for element in array {
            guard let id = element.int, let narrow = UInt32(exactly: id) else { throw wrongType(key, "a list of numeric ids, e.g. [0, 1000]") }
            ids.append(narrow)
        }
        return ids
    }

    mutating func duration(_ key: String) throws(ConfigurationError) -> HumanDuration? {
        guard let text = try string(key) else { return nil }
        guard let duration = HumanDuration(parsing: text) else {
            throw invalid(key, "\"\(text)\" is not a duration; write e.g. \"500ms\", \"30s\", \"5m\", \"2h\" or \"7d\"")
        }
        return duration
    }

    enum SizeSetting { case automatic, size(ByteSize) }

    /// A size, or "auto"; `nil` when the key is absent.
    mutating func sizeOrAutomatic(_ key: String) throws(ConfigurationError) -> SizeSetting? {
        if let text = value(key)?.string, text == "auto" { return .automatic }
        return try size(key).map { .size($0) }
    }

    mutating func size(_ key: String) throws(ConfigurationError) -> ByteSize? {
        guard let value = value(key) else { return nil }
        if let int = value.int, int >= 0 { return ByteSize(bytes: int) }
        guard let text = value.string else { throw wrongType(key, "a size such as \"8MiB\"") }
        guard let size = ByteSize(parsing: text) else {
            throw invalid(key, "\"\(text)\" is not a size; write e.g. \"64KiB\", \"8MiB\", \"1GiB\" or \"10MB\"")
        }
        return size
    }

    mutating func fileMode(_ key: String) throws(ConfigurationError) -> UInt32? {
        guard let text = try string(key) else { return nil }
        guard (3...4).contains(text.count), let mode = UInt32(text, radix: 8), mode <= 0o777 else {
            throw invalid(key, "\"\(text)\" is not an octal file mode such as \"0660\"")
        }
        return mode
    }

    mutating func choice<Choice: RawRepresentable & CaseIterable>(_ key: String) throws(ConfigurationError) -> Choice?
    where Choice.RawValue == String {
        guard let text = try string(key) else { return nil }
        guard let choice = Choice(rawValue: text) else {
            let options = Choice.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: " or ")
            throw invalid(key, "\"\(text)\" is not one of \(options)")
        }
        return choice
    }

    mutating func choice(_ key: String, among options: [String]) throws(ConfigurationError) -> String? {
        guard let text = try string(key) else { return nil }
        guard options.contains(text) else {
            throw invalid(key, "\"\(text)\" is not one of \(options.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        return text
    }

    package func finish() throws(ConfigurationError) {
        for key in table.keys.sorted() where !consumed.contains(key) {
            let known = consumed.sorted().joined(separator: ", ")
            throw ConfigurationError(.unknownKey, key: "\(name).\(key)", line: line(key),
                                     "unknown key (known keys in [\(name)]: \(known))")
        }
    }
}

/// Finds the line of a key in TOML text, for error messages. TOMLKit reports positions only for syntax
/// errors, so this scans the text: good enough for the `key = value` layout a config file uses.
package struct LineLocator: Sendable {
    private let lines: [Substring]

    package init(text: String) {
        lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    }

    /// The 1-based line of `key` inside `[section]` (or the `occurrence`-th `[[section]]`; top level when `section` is nil).
    package func line(section: String?, key: String, occurrence: Int? = nil) -> Int? {
        var current: String?
        var seen = [String: Int]()
        var currentOccurrence = 0
        for (index, raw) in lines.enumerated() {
            let line = raw.trimmingWhitespace()
            if line.hasPrefix("[") {
                let name = line.trimming { "[] \t".contains($0) }
                current = name
                if line.hasPrefix("[[") {
                    currentOccurrence = seen[name, default: -1] + 1
                    seen[name] = currentOccurrence
                }
                continue
            }
            guard current == section, occurrence == nil || occurrence == currentOccurrence else { continue }
            guard line.hasPrefix(key) else { continue }
            let rest = line.dropFirst(key.count).drop(while: { $0 == " " || $0 == "\t" })
            if rest.hasPrefix("=") { return index + 1 }
        }
        return nil
    }

    /// The line of a `[name]` header.
    package func headerLine(_ name: String) -> Int? {
        lines.firstIndex { $0.trimmingWhitespace() == "[\(name)]" || $0.trimmingWhitespace() == "[[\(name)]]" }.map { $0 + 1 }
    }

    /// The line of the `occurrence`-th `[[name]]` header.
    package func arrayHeaderLine(_ name: String, occurrence: Int) -> Int? {
        var count = -1
        for (index, line) in lines.enumerated() where line.trimmingWhitespace() == "[[\(name)]]" {
            count += 1
            if count == occurrence { return index + 1 }
        }
        return nil
    }
}

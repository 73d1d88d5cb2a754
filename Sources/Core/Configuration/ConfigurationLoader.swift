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
            // "" turns the datagram socket off, as it does the HTTP socket.
            if config.intake.datagramSocket == "" { config.intake.datagramSocket = nil }
            try validate(config, locator: locator)
        } catch var error {
            error.file = file
            throw error
        }
        if config.api.keyFile != nil {
            let key = ConfigKey.apiKeyFile
            config.api.keyFileLocation = ConfigurationLocation(file: file, line: locator.line(section: key.section, key: key.key))
        }
        return config
    }

    // MARK: Reading

    /// Reads every key of ``ConfigKey/all`` from its section, in the table's order, without validating
    /// ranges (``validate(_:locator:)`` does). Unknown sections and keys are errors.
    package static func read(_ root: TOMLTable, into config: inout AgentConfiguration, locator: LineLocator) throws(ConfigurationError) {
        let sections = Set(ConfigKey.sections.map(\.name))
        for key in root.keys where !sections.contains(key) {
            throw ConfigurationError(
                .unknownKey, key: key, line: locator.line(section: nil, key: key) ?? locator.headerLine(key),
                "unknown section or key (known sections: \(sections.sorted().joined(separator: ", ")))")
        }
        for (name, keys) in ConfigKey.sections {
            if keys.count == 1, case .arrayOfTables(let read) = keys[0].reader {
                try read(root, locator, &config)
                continue
            }
            guard var section = try SectionReader(root, name, locator) else { continue }
            for key in keys { try key.read(from: &section, into: &config) }
            try section.finish()
        }
    }

    /// Reads the `[[table]]` blocks (``ConfigKey/tables``): special-cased, as each block is one element of
    /// `AgentConfiguration.tables` and its keys depend on each other.
    package static func readTables(_ root: TOMLTable, _ locator: LineLocator, into config: inout AgentConfiguration)
        throws(ConfigurationError)
    {
        let section = ConfigKey.tables.name
        guard let tables = root[section] else { return }
        guard let array = tables.array else {
            throw ConfigurationError(
                .wrongType, key: section, line: locator.headerLine(section),
                "must be an array of tables, written [[table]]")
        }
        for index in array.indices {
            guard let table = array[index].table else {
                throw ConfigurationError(.wrongType, key: section, "each [[table]] entry must be a table")
            }
            var entry = SectionReader(table, name: section, occurrence: index, locator)
            guard let name = try entry.string("name") else {
                throw ConfigurationError(
                    .invalidValue, key: "\(section).name", line: locator.arrayHeaderLine(section, occurrence: index),
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

    // MARK: Validation of values that are well-typed but out of range

    package static func validate(_ config: AgentConfiguration, locator: LineLocator = LineLocator(text: "")) throws(ConfigurationError) {
        func fail(_ key: ConfigKey, _ message: String) -> ConfigurationError {
            ConfigurationError(.invalidValue, key: key.name, line: locator.line(section: key.section, key: key.key), message)
        }
        /// A key of the `[[table]]` blocks (the line is its first occurrence in any block).
        func fail(table field: String, _ message: String) -> ConfigurationError {
            let section = ConfigKey.tables.name
            return ConfigurationError(.invalidValue, key: "\(section).\(field)", line: locator.line(section: section, key: field), message)
        }
        let url = config.api.url
        guard url.hasPrefix("https://") || url.hasPrefix("http://"), url.count > 8 else {
            throw fail(.apiURL, "\"\(url)\" is not an http:// or https:// URL")
        }
        guard config.api.timeout.milliseconds > 0 else { throw fail(.apiTimeout, "must be greater than 0") }

        guard !config.spool.path.isEmpty else { throw fail(.spoolPath, "must not be empty") }
        // A relative path names a different file for every directory a command is run from (and the daemon
        // runs from / under systemd): `status` or `send` from elsewhere found no spool or no socket.
        for (key, path) in [
            (ConfigKey.spoolPath, config.spool.path), (.intakeSocket, config.intake.socket), (.intakeHTTPSocket, config.intake.httpSocket),
            (.intakeDatagramSocket, config.intake.datagramSocket ?? ""), (.apiKeyFile, config.api.keyFile ?? ""),
        ]
        where !path.isEmpty && !path.hasPrefix("/") {
            throw fail(key, "\"\(path)\" is not an absolute path; write it from / (commands run from any directory read the same file)")
        }
        guard config.spool.maxBytes >= .mebibytes(1) else { throw fail(.spoolMaxBytes, "must be at least 1MiB") }
        if let group = config.spool.group, FileSystem.groupID(named: group) == nil {
            throw fail(.spoolGroup, "\"\(group)\" is not a group on this machine (see `getent group`)")
        }

        guard !config.intake.socket.isEmpty else { throw fail(.intakeSocket, "must not be empty") }
        let maxPath = UnixSocketAddress.maxPathBytes
        guard config.intake.socket.utf8.count <= maxPath else {
            throw fail(.intakeSocket, "path is \(config.intake.socket.utf8.count) bytes; Unix socket paths must be under \(maxPath + 1)")
        }
        if let table = config.intake.defaultTable, let problem = TableName.problem(with: table) {
            throw fail(.intakeDefaultTable, problem)
        }
        if let path = config.intake.datagramSocket, path.utf8.count > maxPath {
            throw fail(.intakeDatagramSocket, "path is \(path.utf8.count) bytes; Unix socket paths must be under \(maxPath + 1)")
        }
        if config.intake.httpSocket.utf8.count > maxPath {
            throw fail(
                .intakeHTTPSocket, "path is \(config.intake.httpSocket.utf8.count) bytes; Unix socket paths must be under \(maxPath + 1)")
        }
        if let listen = config.intake.httpListen {
            guard let (host, _) = HostPort.parse(listen) else {
                throw fail(.intakeHTTPListen, "\"\(listen)\" is not host:port, e.g. \"127.0.0.1:8787\"")
            }
            if !config.intake.httpAllowRemote, !HostPort.isLoopback(host) {
                throw fail(
                    .intakeHTTPListen,
                    "\(host) is not a loopback address; the local Stream API has no TLS. Set http_allow_remote = true to accept it anyway")
            }
        }
        // Two listeners on one path: the second would fail to start, or (a socket of the other kind) once
        // took the path from the first.
        var listenerPaths: [String: ConfigKey] = [FileSystem.lexicallyNormal(config.intake.socket): .intakeSocket]
        for (key, path) in [
            (ConfigKey.intakeHTTPSocket, config.intake.httpSocket), (.intakeDatagramSocket, config.intake.datagramSocket ?? ""),
        ]
        where !path.isEmpty {
            if let first = listenerPaths[FileSystem.lexicallyNormal(path)] {
                throw fail(key, "\"\(path)\" is also \(first.name); each listener needs its own path")
            }
            listenerPaths[FileSystem.lexicallyNormal(path)] = key
        }
        guard config.intake.maxLineBytes >= .kibibytes(1), config.intake.maxLineBytes <= .gibibytes(1) else {
            throw fail(.intakeMaxLineBytes, "must be between 1KiB and 1GiB")
        }

        var seen = Set<String>()
        for table in config.tables {
            if let problem = TableName.problem(with: table.name) { throw fail(table: "name", problem) }
            guard seen.insert(TableName.caseFolded(table.name)).inserted else {
                throw fail(table: "name", "table \"\(table.name)\" is listed twice (names differ at most in case or LAKE., as in the lake)")
            }
        }

        guard (1...StreamAPILimits.maxRowsPerRequest).contains(config.batch.maxRows) else {
            throw fail(.batchMaxRows, "must be between 1 and \(StreamAPILimits.maxRowsPerRequest) (the Stream API's limit)")
        }
        guard config.batch.maxBytes.bytes >= 1024, config.batch.maxBytes.bytes <= StreamAPILimits.maxBodyBytes else {
            throw fail(.batchMaxBytes, "must be between 1KiB and 10MB (10000000 bytes, the Stream API's body limit)")
        }
        guard config.batch.linger.milliseconds >= 0 else { throw fail(.batchLinger, "must not be negative") }
        guard (1...9).contains(config.batch.gzipLevel) else { throw fail(.batchGzipLevel, "must be between 1 and 9") }
        guard (1...64).contains(config.batch.concurrency) else { throw fail(.batchConcurrency, "must be between 1 and 64") }
        guard (1...1024).contains(config.batch.maxInFlight) else { throw fail(.batchMaxInFlight, "must be between 1 and 1024") }

        guard config.retry.initial.milliseconds > 0 else { throw fail(.retryInitial, "must be greater than 0") }
        guard config.retry.max >= config.retry.initial else {
            throw fail(.retryMax, "must be at least retry.initial (\(config.retry.initial))")
        }
        guard config.retry.maxAge.milliseconds > 0 else { throw fail(.retryMaxAge, "must be greater than 0") }
        guard config.service.drainTimeout.milliseconds >= 0 else { throw fail(.serviceDrainTimeout, "must not be negative") }
        if let listen = config.metrics.listen {
            // Another listener's address: `run` failed with "in use" (or "is definite-agent already
            // running?"), about its own listener.
            if listen.hasPrefix("/") {
                if let first = listenerPaths[FileSystem.lexicallyNormal(listen)] {
                    throw fail(.metricsListen, "\"\(listen)\" is also \(first.name); each listener needs its own address")
                }
            } else {
                guard let metrics = HostPort.parse(listen) else {
                    throw fail(.metricsListen, "\"\(listen)\" is neither host:port (e.g. \"127.0.0.1:9464\") nor an absolute socket path")
                }
                if let http = config.intake.httpListen, let intake = HostPort.parse(http), intake.port == metrics.port, metrics.port != 0,
                    HostPort.sameAddress(intake.host, metrics.host) || HostPort.isWildcard(intake.host) || HostPort.isWildcard(metrics.host)
                {
                    throw fail(
                        .metricsListen, "\"\(listen)\" is also intake.http_listen (\"\(http)\"); each listener needs its own address")
                }
            }
        }
    }

}

/// `host:port` addresses in the configuration.
package enum HostPort {
    /// Whether `host` binds every address (`0.0.0.0`, `::`, or empty), so it overlaps any other on its port.
    package static func isWildcard(_ host: String) -> Bool { host.isEmpty || host == "0.0.0.0" || host == "::" }

    /// Whether two hosts name one address: spelt alike in any case, `localhost` being `127.0.0.1` (what the
    /// agent binds for it). `127.0.0.2` or `::1` beside `127.0.0.1` are other addresses, which bind apart.
    package static func sameAddress(_ a: String, _ b: String) -> Bool {
        func normal(_ host: String) -> String { host.lowercased() == "localhost" ? "127.0.0.1" : host.lowercased() }
        return normal(a) == normal(b)
    }

    package static func parse(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    package static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

// MARK: - Section reading

/// Reads the keys of one TOML table, remembering which it consumed so leftovers are reported as unknown.
package struct SectionReader {
    package let table: TOMLTable
    package let name: String
    package let occurrence: Int?
    package let locator: LineLocator
    package var consumed = Set<String>()

    package init?(_ root: TOMLTable, _ name: String, _ locator: LineLocator) throws(ConfigurationError) {
        guard let value = root[name] else { return nil }
        guard let table = value.table else {
            throw ConfigurationError(
                .wrongType, key: name, line: locator.line(section: nil, key: name), "must be a table, written [\(name)]")
        }
        self.init(table, name: name, occurrence: nil, locator)
    }

    package init(_ table: TOMLTable, name: String, occurrence: Int?, _ locator: LineLocator) {
        self.table = table
        self.name = name
        self.occurrence = occurrence
        self.locator = locator
    }

    package func line(_ key: String) -> Int? { locator.line(section: name, key: key, occurrence: occurrence) }

    package func invalid(_ key: String, _ message: String) -> ConfigurationError {
        ConfigurationError(.invalidValue, key: "\(name).\(key)", line: line(key), message)
    }

    package func wrongType(_ key: String, _ expected: String) -> ConfigurationError {
        ConfigurationError(.wrongType, key: "\(name).\(key)", line: line(key), "must be \(expected)")
    }

    package mutating func value(_ key: String) -> (any TOMLValueConvertible)? {
        consumed.insert(key)
        return table[key]
    }

    package mutating func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let value = value(key) else { return nil }
        guard let string = value.string else { throw wrongType(key, "a string") }
        return string
    }

    package mutating func int(_ key: String) throws(ConfigurationError) -> Int? {
        guard let value = value(key) else { return nil }
        guard let int = value.int else { throw wrongType(key, "an integer") }
        return int
    }

    package mutating func stringArray(_ key: String) throws(ConfigurationError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw wrongType(key, "a list of strings, e.g. [\"id\"]") }
        var strings: [String] = []
        for element in array {
            guard let string = element.string else { throw wrongType(key, "a list of strings, e.g. [\"id\"]") }
            strings.append(string)
        }
        return strings
    }

    package mutating func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let flag = value.bool else { throw wrongType(key, "true or false") }
        return flag
    }

    package mutating func ids(_ key: String) throws(ConfigurationError) -> [UInt32]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw wrongType(key, "a list of numeric ids, e.g. [0, 1000]") }
        var ids: [UInt32] = []
        for element in array {
            guard let id = element.int, let narrow = UInt32(exactly: id) else {
                throw wrongType(key, "a list of numeric ids, e.g. [0, 1000]")
            }
            ids.append(narrow)
        }
        return ids
    }

    package mutating func duration(_ key: String) throws(ConfigurationError) -> HumanDuration? {
        guard let text = try string(key) else { return nil }
        switch HumanDuration.parse(text) {
        case .success(let duration): return duration
        case .failure(let failure): throw invalid(key, failure.explanation(text))
        }
    }

    package enum SizeSetting {
        case automatic
        case size(ByteSize)
    }

    /// A size, or "auto"; `nil` when the key is absent.
    package mutating func sizeOrAutomatic(_ key: String) throws(ConfigurationError) -> SizeSetting? {
        if let text = value(key)?.string, text == "auto" { return .automatic }
        return try size(key).map { .size($0) }
    }

    package mutating func size(_ key: String) throws(ConfigurationError) -> ByteSize? {
        guard let value = value(key) else { return nil }
        if let int = value.int, int >= 0 { return ByteSize(bytes: int) }
        guard let text = value.string else { throw wrongType(key, "a size such as \"8MiB\"") }
        switch ByteSize.parse(text) {
        case .success(let size): return size
        case .failure(let failure): throw invalid(key, failure.explanation(text))
        }
    }

    package mutating func fileMode(_ key: String) throws(ConfigurationError) -> UInt32? {
        guard let text = try string(key) else { return nil }
        guard (3...4).contains(text.count), let mode = UInt32(text, radix: 8), mode <= 0o777 else {
            throw invalid(key, "\"\(text)\" is not an octal file mode such as \"0660\"")
        }
        return mode
    }

    package mutating func choice<Choice: RawRepresentable & CaseIterable>(_ key: String) throws(ConfigurationError) -> Choice?
    where Choice.RawValue == String {
        guard let text = try string(key) else { return nil }
        guard let choice = Choice(rawValue: text) else {
            let options = Choice.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: " or ")
            throw invalid(key, "\"\(text)\" is not one of \(options)")
        }
        return choice
    }

    package func finish() throws(ConfigurationError) {
        for key in table.keys.sorted() where !consumed.contains(key) {
            let known = consumed.sorted().joined(separator: ", ")
            throw ConfigurationError(
                .unknownKey, key: "\(name).\(key)", line: line(key),
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

import TOMLKit
import Testing

@testable import Core
@testable import Operations

/// The table of configuration keys (``ConfigKey/all``) against the code that uses it and the documents
/// that describe it: the README's configuration reference and the sample `etc/definite-agent/agent.toml`.
@Suite("Configuration keys")
struct ConfigKeyTests {
    /// The package root, found from this file.
    static let root = #filePath.components(separatedBy: "/Tests/")[0]

    // MARK: The table itself

    @Test func namesAreUniqueAndEachSectionIsInOnePiece() {
        let names = ConfigKey.all.map(\.name)
        #expect(Set(names).count == names.count)
        let sections = ConfigKey.sections.map(\.name)
        #expect(Set(sections).count == sections.count, "the keys of a section must be next to each other: \(sections)")
        #expect(sections == ["api", "spool", "intake", "table", "batch", "retry", "service", "metrics", "log"])
    }

    /// A property added to `AgentConfiguration` without a key in the table fails here.
    @Test func everyPropertyOfTheConfigurationHasAKey() {
        var properties: Set<String> = []
        for section in Mirror(reflecting: AgentConfiguration()).children {
            guard let label = section.label else { continue }
            if label == "tables" {
                properties.insert(ConfigKey.tables.name)
                continue
            }
            for field in Mirror(reflecting: section.value).children {
                // Where `key_file` was written: filled in by the loader, not a key of its own.
                guard let name = field.label, name != "keyFileLocation" else { continue }
                properties.insert("\(Self.snakeCase(label)).\(Self.snakeCase(name))")
            }
        }
        #expect(properties == Set(ConfigKey.all.map(\.name)))
    }

    @Test func theTableBlocksKnowExactlyTheFieldsTheTableLists() throws {
        guard case .arrayOfTables(let fields) = ConfigKey.tables.type else {
            Issue.record("[[table]] is not an array of tables")
            return
        }
        do {
            _ = try ConfigurationLoader.parse("[[table]]\nname = \"bronze.u\"\nunknown = 1")
            Issue.record("an unknown key in [[table]] was accepted")
        } catch {
            // The loader lists the keys it read: they are the fields.
            #expect(error.message.hasSuffix("(known keys in [table]: \(fields.map(\.name).sorted().joined(separator: ", ")))"))
        }
    }

    // MARK: The documents

    /// Every key of the README's configuration table, with its default and its "on SIGHUP" column.
    @Test func theReadmeDocumentsEveryKeyWithItsDefaultAndReloadMode() throws {
        let readme = try #require(try FileSystem.text(of: Self.root + "/README.md"))
        let reference = try #require(readme.components(separatedBy: "\n## Configuration").dropFirst().first)
            .components(separatedBy: "\n## ")[0]
        var documented: [String: (defaultValue: String?, reload: String, fields: [String])] = [:]
        for line in reference.split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.dropFirst(2).components(separatedBy: " | ")
            try #require(cells.count >= 4, "\(line)")
            let names = Self.codeSpans(cells[0])
            let defaults = cells[1] == "–" ? [] : Self.codeSpans(cells[1])
            if let first = names.first, first.hasPrefix("[[") {
                documented[first.trimming { "[]".contains($0) }] = (nil, cells[2], Array(names.dropFirst()))
                continue
            }
            #expect(defaults.count <= 1 || defaults.count == names.count, "\(line)")
            for (index, name) in names.enumerated() {
                #expect(documented[name] == nil, "\(name) is documented twice")
                documented[name] = (defaults.count > 1 ? defaults[index] : defaults.first, cells[2], [])
            }
        }
        Self.expectSameKeys(Set(documented.keys), in: "the README")
        for key in ConfigKey.all {
            guard let entry = documented[key.name] else { continue }
            #expect(entry.reload == (key.reload == .atOnce ? "at once" : "restart"), "\(key.name): on SIGHUP")
            if case .arrayOfTables(let fields) = key.type {
                #expect(entry.fields == fields.map(\.name))
            } else if let literal = entry.defaultValue {
                // Written as the default (`"60s"` for a default rendered `"1m"` is the same value).
                let isDefault = try !key.differs(Self.reading(literal, as: key), AgentConfiguration())
                #expect(isDefault, "\(key.name): the README says \(literal), the default is \(key.defaultValue ?? "unset")")
            } else {
                #expect(key.defaultValue == nil, "\(key.name): the README says it is unset, the default is \(key.defaultValue ?? "")")
            }
        }
    }

    /// Every key of `agent.toml`: a key with a default is written with it, a key without one is commented out.
    @Test func theSampleFileListsEveryKey() throws {
        let path = Self.root + "/etc/definite-agent/agent.toml"
        let text = try #require(try FileSystem.text(of: path))
        var section: String?
        var keys: [String] = []
        var commented: Set<String> = []
        var fields: [String] = []
        for raw in text.split(separator: "\n") {
            var line = raw.trimmingWhitespace()
            let isComment = line.hasPrefix("#")
            if isComment { line = line.dropFirst().trimmingWhitespace() }
            if line.hasPrefix("["), line.hasSuffix("]") {
                section = line.trimming { "[] ".contains($0) }
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmingWhitespace()
            guard !key.isEmpty, key.allSatisfy({ $0.isLowercase || $0 == "_" }) else { continue }  // prose
            let name = "\(try #require(section, "\(key) is outside any section")).\(key)"
            if section == ConfigKey.tables.name {
                fields.append(key)
            } else {
                keys.append(name)
                if isComment { commented.insert(name) }
            }
        }
        Self.expectSameKeys(Set(keys).union([ConfigKey.tables.name]), in: "the sample file")
        let plain = ConfigKey.all.filter { !$0.isArrayOfTables }
        #expect(keys == plain.map(\.name), "the sample lists each key once, in the table's order")
        let sample = try ConfigurationLoader.load(path: path)
        for key in plain {
            #expect(
                commented.contains(key.name) == (key.defaultValue == nil),
                "\(key.name): a key with a default is written with it, one without is an example, commented out")
            #expect(
                !key.differs(sample, AgentConfiguration()),
                "\(key.name): the sample's value is not the default, \(key.defaultValue ?? "unset")")
        }
        guard case .arrayOfTables(let tableFields) = ConfigKey.tables.type else { return }
        #expect(fields == tableFields.map(\.name))
    }

    // MARK: Reload

    /// Changing one key alone is reported in the list of its reload mode, and only there.
    @Test(arguments: ConfigKey.all)
    func aChangedKeyIsReportedAsItsReloadModeSays(key: ConfigKey) throws {
        let new =
            key.isArrayOfTables
            ? try Self.reading("[[table]]\nname = \"bronze.changed\"")
            : try Self.reading(Self.anotherValue(than: key), as: key)
        #expect(key.differs(new, AgentConfiguration()))
        let live = LiveConfiguration(AgentConfiguration())
        let outcome = live.reload(new)
        switch key.reload {
        case .atOnce:
            #expect(outcome == .init(applied: [key.name], needRestart: []))
            #expect(live.current == new)
        case .restart:
            #expect(outcome == .init(applied: [], needRestart: [key.name]))
            #expect(live.current == AgentConfiguration())
        }
    }

    // MARK: Rendering

    @Test func theDefaultsRenderAsBefore() {
        #expect(EffectiveConfiguration.render(AgentConfiguration(), apiKey: "<redacted>") == effectiveDefaults)
    }

    @Test func everyKeySetRendersAsBefore() throws {
        var config = try ConfigurationLoader.parse(configurationOfEveryKey)
        config.spool.group = "readers"  // set here: the loader checks that the group exists
        #expect(EffectiveConfiguration.render(config, apiKey: "<redacted>") == effectiveConfiguration)
    }

    // MARK: Helpers

    /// `documented` names exactly the keys of the table.
    static func expectSameKeys(_ documented: Set<String>, in document: String) {
        let names = Set(ConfigKey.all.map(\.name))
        #expect(names.subtracting(documented).isEmpty, "keys missing from \(document): \(names.subtracting(documented).sorted())")
        #expect(
            documented.subtracting(names).isEmpty,
            "keys in \(document) that are not in ConfigKey.all: \(documented.subtracting(names).sorted())")
    }

    /// `maxInFlight` → `max_in_flight`, `allowUIDs` → `allow_uids`.
    static func snakeCase(_ name: String) -> String {
        var result = ""
        var previous: Character?
        for character in name {
            if character.isUppercase, let previous, previous.isLowercase || previous.isNumber { result += "_" }
            result += character.lowercased()
            previous = character
        }
        return result
    }

    /// The `code spans` of a Markdown table cell.
    static func codeSpans(_ cell: String) -> [String] {
        cell.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
    }

    /// The configuration with `key = literal` read into the defaults, unvalidated.
    static func reading(_ literal: String, as key: ConfigKey) throws -> AgentConfiguration {
        try reading("[\(key.section)]\n\(key.key) = \(literal)")
    }

    /// The configuration with `text` read into the defaults, unvalidated (a reload takes what it is given).
    static func reading(_ text: String) throws -> AgentConfiguration {
        var config = AgentConfiguration()
        try ConfigurationLoader.read(TOMLTable(string: text), into: &config, locator: LineLocator(text: text))
        return config
    }

    /// A TOML literal of the key's type that is not its default.
    static func anotherValue(than key: ConfigKey) throws -> String {
        let current = key.defaultValue
        switch key.type {
        case .string: return "\"/tmp/changed\""
        case .int: return String(try #require(current.flatMap { Int($0) }) + 1)
        case .bool: return current == "true" ? "false" : "true"
        case .size, .sizeOrAutomatic: return current == "\"3MiB\"" ? "\"5MiB\"" : "\"3MiB\""
        case .duration: return current == "\"3ms\"" ? "\"5ms\"" : "\"3ms\""
        case .choice(let options): return try #require(options.map { "\"\($0)\"" }.first { $0 != current })
        case .stringList: return "[\"changed\"]"
        case .ids: return "[4242]"
        case .fileMode: return current == "\"0604\"" ? "\"0640\"" : "\"0604\""
        case .arrayOfTables: throw ConfigurationError(.invalidValue, key: key.name, "an array of tables has no literal")
        }
    }
}

/// `config check` of an empty file before the table of keys (the API key's line aside).
private let effectiveDefaults = """
    [api]
    url = "https://api.definite.app/v2/stream"
    # key_file not set
    # key = <redacted>
    timeout = "30s"

    [spool]
    path = "/var/lib/definite-agent/spool.db"
    max_bytes = "1GiB"
    durability = "full"
    disk_reserve = "auto"  # 5% of the spool's filesystem, at most 64MiB
    # group not set: the spool's files are 0600, readable by the daemon's user only

    [intake]
    socket = "/run/definite-agent/agent.sock"
    socket_mode = "0660"
    # default_table not set
    max_line_bytes = "16MiB"
    allow_uids = []
    allow_gids = []
    http_socket = "/run/definite-agent/http.sock"
    # http_listen not set
    http_allow_remote = false
    # http_token not set
    # datagram_socket not set
    wait_timeout = "30s"

    [batch]
    max_rows = 50000
    max_bytes = "4MiB"
    linger = "1s"
    compression = "gzip"
    gzip_level = 6
    format = "json"
    concurrency = 6
    max_in_flight = 64

    [retry]
    initial = "500ms"
    max = "1m"
    max_age = "7d"

    [service]
    drain_timeout = "10s"

    [metrics]
    # listen not set: no metrics endpoint

    [log]
    level = "info"
    format = "logfmt"
    """

/// A configuration that sets every key.
private let configurationOfEveryKey = """
    [api]
    url = "http://127.0.0.1:1/v2/stream"
    key_file = "/tmp/agent/key"
    timeout = "5s"
    [spool]
    path = "/tmp/agent/s.db"
    max_bytes = "2GiB"
    durability = "normal"
    disk_reserve = "256MiB"
    [intake]
    socket = "/tmp/agent/a.sock"
    socket_mode = "0600"
    default_table = "bronze.events"
    max_line_bytes = "1MiB"
    allow_uids = [0, 1000]
    allow_gids = [5]
    http_socket = ""
    http_listen = "127.0.0.1:8787"
    http_allow_remote = true
    datagram_socket = "/tmp/agent/d.sock"
    wait_timeout = "2m"
    [[table]]
    name = "bronze.users"
    mode = "merge"
    primary_key = ["id"]
    [[table]]
    name = "bronze.events"
    [batch]
    max_rows = 1000
    max_bytes = 2000000
    linger = "250ms"
    compression = "none"
    gzip_level = 9
    format = "ndjson"
    concurrency = 4
    max_in_flight = 16
    [retry]
    initial = "1s"
    max = "2m"
    max_age = "1d"
    [service]
    drain_timeout = "3s"
    [metrics]
    listen = "127.0.0.1:9464"
    [log]
    level = "debug"
    format = "json"
    """

/// `config check` of ``configurationOfEveryKey`` before the table of keys (with `group = "readers"`).
private let effectiveConfiguration = """
    [api]
    url = "http://127.0.0.1:1/v2/stream"
    key_file = "/tmp/agent/key"
    # key = <redacted>
    timeout = "5s"

    [spool]
    path = "/tmp/agent/s.db"
    max_bytes = "2GiB"
    durability = "normal"
    disk_reserve = "256MiB"
    group = "readers"  # the spool's files are 0640, readable by this group

    [intake]
    socket = "/tmp/agent/a.sock"
    socket_mode = "0600"
    default_table = "bronze.events"
    max_line_bytes = "1MiB"
    allow_uids = [0, 1000]
    allow_gids = [5]
    http_socket = ""
    http_listen = "127.0.0.1:8787"
    http_allow_remote = true
    # http_token not set: anyone who can reach http_listen can write records
    datagram_socket = "/tmp/agent/d.sock"
    wait_timeout = "2m"

    [[table]]
    name = "bronze.users"
    mode = "merge"
    primary_key = ["id"]

    [[table]]
    name = "bronze.events"
    mode = "append"

    [batch]
    max_rows = 1000
    max_bytes = "2000000"
    linger = "250ms"
    compression = "none"
    gzip_level = 9
    format = "ndjson"
    concurrency = 4
    max_in_flight = 16

    [retry]
    initial = "1s"
    max = "2m"
    max_age = "1d"

    [service]
    drain_timeout = "3s"

    [metrics]
    listen = "127.0.0.1:9464"

    [log]
    level = "debug"
    format = "json"
    """

import TOMLKit

/// One key of `agent.toml`, named once: what it is called, what its value is written as, when a change
/// takes effect, what it means, and how to read, compare and render it.
///
/// ``all`` is the table of every key, in the order of the file. ``ConfigurationLoader`` reads the file
/// with it, ``LiveConfiguration/reload(_:)`` decides with it what a SIGHUP applies and what waits for a
/// restart, and `config check` renders the effective configuration with it. The README's configuration
/// reference and the sample `etc/definite-agent/agent.toml` are checked against it by the unit tests.
///
/// The embedded default is not repeated here: ``defaultValue`` renders the key of `AgentConfiguration()`.
public struct ConfigKey: Sendable, Hashable, CustomStringConvertible {
    /// What a key's value is written as in TOML: a closed list, so that every kind of value has one reader
    /// and one rendering.
    public enum ValueType: Sendable, Hashable {
        /// `"text"`.
        case string
        /// `42`.
        case int
        /// `true` or `false`.
        case bool
        /// `"8MiB"`, `"10MB"` or a plain number of bytes (see ``ByteSize``).
        case size
        /// A size, or `"auto"` for a value the daemon works out itself.
        case sizeOrAutomatic
        /// `"500ms"`, `"30s"`, `"5m"`, `"2h"` or `"7d"` (see ``HumanDuration``).
        case duration
        /// One of the strings listed.
        case choice([String])
        /// `["a", "b"]`.
        case stringList
        /// Numeric user or group ids: `[0, 1000]`.
        case ids
        /// An octal file mode written as a string: `"0660"`.
        case fileMode
        /// An array of tables, `[[name]]` blocks, each with these keys.
        case arrayOfTables([Field])
    }

    /// A key of each block of an ``ValueType/arrayOfTables(_:)`` key.
    public struct Field: Sendable, Hashable {
        public let name: String
        public let type: ValueType
    }

    /// When a changed value takes effect on SIGHUP.
    public enum Reload: Sendable, Hashable {
        /// The new value is in force as soon as the file is reloaded (for intake settings: on new connections).
        case atOnce
        /// The old value stays in force until the daemon restarts (a listener, the spool, the log, …).
        case restart
    }

    /// The dotted name, `section.key` (`spool.max_bytes`); for an array of tables, the section alone (`table`).
    public let name: String
    public let type: ValueType
    public let reload: Reload
    /// One line on what the key does.
    public let doc: String

    /// How the key is read from its TOML section.
    package let reader: Reader
    /// Whether the key's value differs between two configurations.
    package let differs: @Sendable (AgentConfiguration, AgentConfiguration) -> Bool
    /// Copies the key's value from the second configuration into the first.
    package let restore: @Sendable (inout AgentConfiguration, AgentConfiguration) -> Void
    /// The value as a TOML literal (`"1GiB"`, `64`, `[]`); `nil` when the key is not set.
    package let literal: @Sendable (AgentConfiguration) -> String?
    /// The key's lines in `config check`.
    package let lines: @Sendable (AgentConfiguration) -> [String]

    /// How a key is read from the file.
    package enum Reader: Sendable {
        /// A `key = value` in the `[section]` table; absent keeps the default.
        case key(@Sendable (inout SectionReader, inout AgentConfiguration) throws(ConfigurationError) -> Void)
        /// `[[section]]` blocks, read as a whole from the root table.
        case arrayOfTables(@Sendable (TOMLTable, LineLocator, inout AgentConfiguration) throws(ConfigurationError) -> Void)
    }

    /// The section: `spool` for `spool.max_bytes`.
    public var section: String { String(name.prefix { $0 != "." }) }

    /// The key inside its section: `max_bytes` for `spool.max_bytes`; empty for an array of tables.
    public var key: String {
        guard let dot = name.firstIndex(of: ".") else { return "" }
        return String(name[name.index(after: dot)...])
    }

    /// The embedded default as `config check` renders it (`"1GiB"`, `64`, `[]`); `nil` when the key is unset
    /// by default.
    public var defaultValue: String? { literal(AgentConfiguration()) }

    public var description: String { name }

    public static func == (lhs: ConfigKey, rhs: ConfigKey) -> Bool { lhs.name == rhs.name }
    public func hash(into hasher: inout Hasher) { hasher.combine(name) }

    /// Reads the key from its section into `config`; a key that is absent keeps its value.
    package func read(from section: inout SectionReader, into config: inout AgentConfiguration) throws(ConfigurationError) {
        guard case .key(let read) = reader else { return }
        try read(&section, &config)
    }

    /// Whether this is a `[[section]]` array of tables rather than a `key = value`.
    package var isArrayOfTables: Bool {
        if case .arrayOfTables = reader { return true }
        return false
    }
}

// MARK: - Building entries

extension ConfigKey {
    /// A key whose value is always set (it has a default).
    ///
    /// - Parameter comment: a remark `config check` prints after the value (`  # …`), if any, for this configuration.
    package init<Value>(
        _ name: String, _ path: WritableKeyPath<AgentConfiguration, Value> & Sendable, _ codec: ConfigValueCodec<Value>,
        _ reload: Reload, _ doc: String, comment: (@Sendable (AgentConfiguration) -> String?)? = nil
    ) {
        let key = String(name.split(separator: ".", maxSplits: 1).last ?? "")
        self.init(
            name: name, type: codec.type, reload: reload, doc: doc,
            reader: .key({ section, config throws(ConfigurationError) in
                if let value = try codec.read(&section, key) { config[keyPath: path] = value }
            }),
            path: path,
            literal: { codec.literal($0[keyPath: path]) },
            lines: { config in
                let line = "\(key) = \(codec.literal(config[keyPath: path]))"
                return [comment?(config).map { "\(line)  # \($0)" } ?? line]
            })
    }

    /// A key that may be unset (no default): `config check` prints `# key not set` for it.
    ///
    /// - Parameters:
    ///   - secret: the value is never printed, only that it is set (`# key = <redacted>`).
    ///   - comment: a remark `config check` prints after the value (`  # …`) or after "not set" (`: …`).
    package init<Value>(
        _ name: String, optional path: WritableKeyPath<AgentConfiguration, Value?> & Sendable, _ codec: ConfigValueCodec<Value>,
        _ reload: Reload, _ doc: String, secret: Bool = false, comment: (@Sendable (AgentConfiguration) -> String?)? = nil
    ) {
        let key = String(name.split(separator: ".", maxSplits: 1).last ?? "")
        self.init(
            name: name, type: codec.type, reload: reload, doc: doc,
            reader: .key({ section, config throws(ConfigurationError) in
                if let value = try codec.read(&section, key) { config[keyPath: path] = value }
            }),
            path: path,
            literal: { $0[keyPath: path].map(codec.literal) },
            lines: { config in
                let remark = comment?(config)
                guard let value = config[keyPath: path] else { return ["# \(key) not set" + (remark.map { ": \($0)" } ?? "")] }
                let line = secret ? "# \(key) = <redacted>" : "\(key) = \(codec.literal(value))"
                return [remark.map { "\(line)  # \($0)" } ?? line]
            })
    }

    /// Every entry goes through here: compares and restores through `path`.
    package init<Value: Equatable & Sendable>(
        name: String, type: ValueType, reload: Reload, doc: String, reader: Reader,
        path: WritableKeyPath<AgentConfiguration, Value> & Sendable,
        literal: @escaping @Sendable (AgentConfiguration) -> String?,
        lines: @escaping @Sendable (AgentConfiguration) -> [String]
    ) {
        self.name = name
        self.type = type
        self.reload = reload
        self.doc = doc
        self.reader = reader
        self.differs = { $0[keyPath: path] != $1[keyPath: path] }
        self.restore = { $0[keyPath: path] = $1[keyPath: path] }
        self.literal = literal
        self.lines = lines
    }
}

// MARK: - Value types

/// How values of one Swift type are read from a TOML section and written back as TOML literals, tied to
/// the ``ConfigKey/ValueType`` that documents them.
package struct ConfigValueCodec<Value: Equatable & Sendable>: Sendable {
    package let type: ConfigKey.ValueType
    /// The value of `key` in the section; `nil` when it is absent. Throws on a wrong type or a bad value.
    package let read: @Sendable (inout SectionReader, String) throws(ConfigurationError) -> Value?
    /// The value as a TOML literal, as `config check` prints it.
    package let literal: @Sendable (Value) -> String
}

extension ConfigValueCodec where Value == String {
    package static var string: Self {
        Self(type: .string, read: { section, key throws(ConfigurationError) in try section.string(key) }, literal: JSONCompactor.quote)
    }
}

extension ConfigValueCodec where Value: RawRepresentable & CaseIterable, Value.RawValue == String {
    /// One of the enum's cases, written as its raw value.
    package static var choice: Self {
        Self(
            type: .choice(Value.allCases.map(\.rawValue)),
            read: { section, key throws(ConfigurationError) in try section.choice(key) },
            literal: { JSONCompactor.quote($0.rawValue) })
    }
}

extension ConfigValueCodec where Value == Int {
    package static var int: Self {
        Self(type: .int, read: { section, key throws(ConfigurationError) in try section.int(key) }, literal: { String($0) })
    }
}

extension ConfigValueCodec where Value == Bool {
    package static var bool: Self {
        Self(type: .bool, read: { section, key throws(ConfigurationError) in try section.bool(key) }, literal: { String($0) })
    }
}

extension ConfigValueCodec where Value == ByteSize {
    package static var size: Self {
        Self(
            type: .size, read: { section, key throws(ConfigurationError) in try section.size(key) },
            literal: { JSONCompactor.quote($0.description) })
    }
}

extension ConfigValueCodec where Value == ByteSize? {
    /// A size, or `"auto"`, which is `nil`.
    package static var sizeOrAutomatic: Self {
        Self(
            type: .sizeOrAutomatic,
            read: { section, key throws(ConfigurationError) -> ByteSize?? in
                switch try section.sizeOrAutomatic(key) {
                case .automatic: return .some(nil)
                case .size(let size): return .some(size)
                case nil: return nil
                }
            },
            literal: { JSONCompactor.quote($0?.description ?? "auto") })
    }
}

extension ConfigValueCodec where Value == HumanDuration {
    package static var duration: Self {
        Self(
            type: .duration, read: { section, key throws(ConfigurationError) in try section.duration(key) },
            literal: { JSONCompactor.quote($0.description) })
    }
}

extension ConfigValueCodec where Value == [UInt32] {
    package static var ids: Self {
        Self(
            type: .ids, read: { section, key throws(ConfigurationError) in try section.ids(key) },
            literal: { "[" + $0.map { String($0) }.joined(separator: ", ") + "]" })
    }
}

extension ConfigValueCodec where Value == UInt32 {
    package static var fileMode: Self {
        Self(
            type: .fileMode, read: { section, key throws(ConfigurationError) in try section.fileMode(key) },
            literal: { JSONCompactor.quote("0" + String($0, radix: 8)) })
    }
}

// MARK: - The table

extension ConfigKey {
    // [api]
    public static let apiURL = ConfigKey(
        "api.url", \.api.url, .string, .atOnce,
        "The Stream API endpoint records are forwarded to.")
    public static let apiKeyFile = ConfigKey(
        "api.key_file", optional: \.api.keyFile, .string, .atOnce,
        "A file holding the API key; unset: $DEFINITE_API_KEY, then $CREDENTIALS_DIRECTORY/api-key.")
    public static let apiTimeout = ConfigKey(
        "api.timeout", \.api.timeout, .duration, .atOnce,
        "Connect plus request timeout for one HTTP request.")

    // [spool]
    public static let spoolPath = ConfigKey(
        "spool.path", \.spool.path, .string, .restart,
        "The SQLite spool: acknowledged records live here until the API confirms them.")
    public static let spoolMaxBytes = ConfigKey(
        "spool.max_bytes", \.spool.maxBytes, .size, .restart,
        "Records held (pending plus dead letters) may not exceed this; further writes get 507.")
    public static let spoolDurability = ConfigKey(
        "spool.durability", \.spool.durability, .choice, .restart,
        "\"full\": the WAL is fsynced before every acknowledgement; \"normal\": at checkpoints only.")
    public static let spoolDiskReserve = ConfigKey(
        "spool.disk_reserve", \.spool.diskReserve, .sizeOrAutomatic, .restart,
        "Free disk kept for delivery to record its progress; intake gets 507 first. \"auto\": 5% of the filesystem, at most 64MiB.",
        comment: { $0.spool.diskReserve == nil ? "5% of the spool's filesystem, at most 64MiB" : nil })
    public static let spoolGroup = ConfigKey(
        "spool.group", optional: \.spool.group, .string, .restart,
        "A group (name or gid) that may read the spool: its files are then 0640; unset: 0600.",
        comment: {
            $0.spool.group == nil
                ? "the spool's files are 0600, readable by the daemon's user only"
                : "the spool's files are 0640, readable by this group"
        })

    // [intake]
    public static let intakeSocket = ConfigKey(
        "intake.socket", \.intake.socket, .string, .restart,
        "The Unix stream socket local programs write to, one JSON request per line.")
    public static let intakeSocketMode = ConfigKey(
        "intake.socket_mode", \.intake.socketMode, .fileMode, .restart,
        "Permissions of the socket file, octal.")
    public static let intakeDefaultTable = ConfigKey(
        "intake.default_table", optional: \.intake.defaultTable, .string, .atOnce,
        "The table that plain records (lines without a config object) go to; unset: they are refused.")
    public static let intakeMaxLineBytes = ConfigKey(
        "intake.max_line_bytes", \.intake.maxLineBytes, .size, .atOnce,
        "A longer line gets an error reply and its connection is closed.")
    public static let intakeAllowUIDs = ConfigKey(
        "intake.allow_uids", \.intake.allowUIDs, .ids, .atOnce,
        "Peers with these uids may write (SO_PEERCRED); with allow_gids both empty: anyone who can open the socket.")
    public static let intakeAllowGIDs = ConfigKey(
        "intake.allow_gids", \.intake.allowGIDs, .ids, .atOnce,
        "Peers with these gids may write (SO_PEERCRED); with allow_uids both empty: anyone who can open the socket.")
    public static let intakeHTTPSocket = ConfigKey(
        "intake.http_socket", \.intake.httpSocket, .string, .restart,
        "The local Stream API (HTTP) on this Unix socket; \"\" turns it off.")
    public static let intakeHTTPListen = ConfigKey(
        "intake.http_listen", optional: \.intake.httpListen, .string, .restart,
        "The local Stream API on a TCP address too, e.g. \"127.0.0.1:8787\"; loopback only unless http_allow_remote.")
    public static let intakeHTTPAllowRemote = ConfigKey(
        "intake.http_allow_remote", \.intake.httpAllowRemote, .bool, .restart,
        "Allow a non-loopback http_listen (there is no TLS).")
    public static let intakeHTTPToken = ConfigKey(
        "intake.http_token", optional: \.intake.httpToken, .string, .atOnce,
        "When set, HTTP requests must carry Authorization: Bearer <token>.",
        secret: true,
        comment: { $0.intake.httpToken == nil && $0.intake.httpListen != nil ? "anyone who can reach http_listen can write records" : nil })
    public static let intakeDatagramSocket = ConfigKey(
        "intake.datagram_socket", optional: \.intake.datagramSocket, .string, .restart,
        "A Unix datagram socket taking one request per datagram, never answered; unset: off.")
    public static let intakeWaitTimeout = ConfigKey(
        "intake.wait_timeout", \.intake.waitTimeout, .duration, .atOnce,
        "How long a local Stream API request with config.wait = true waits for the API's commit before a 202.")

    /// `[[table]]`: defaults for requests that name a table without a mode.
    ///
    /// Special-cased: an array of tables has no key path per key (each block is one element of
    /// `AgentConfiguration.tables`, whose keys are checked against each other: `primary_key` only with
    /// `mode = "merge"`), so it is read by `ConfigurationLoader.readTables`, compared as a whole on reload
    /// (reported as `table`) and rendered here block by block.
    public static let tables = ConfigKey(
        name: "table",
        type: .arrayOfTables([
            Field(name: "name", type: .string),
            Field(name: "mode", type: .choice(AgentConfiguration.Mode.allCases.map(\.rawValue))),
            Field(name: "primary_key", type: .stringList),
        ]),
        reload: .atOnce,
        doc: "Defaults for requests that name a table without a mode; primary_key (one column) for merge only.",
        reader: .arrayOfTables(ConfigurationLoader.readTables),
        path: \.tables,
        literal: { _ in nil },
        lines: { config in
            config.tables.flatMap { table in
                ["[[table]]", "name = \(JSONCompactor.quote(table.name))", "mode = \(JSONCompactor.quote(table.mode.rawValue))"]
                    + (table.primaryKey.map { ["primary_key = [\(JSONCompactor.quote($0))]"] } ?? [])
                    + [""]
            }
        })

    // [batch]
    public static let batchMaxRows = ConfigKey(
        "batch.max_rows", \.batch.maxRows, .int, .atOnce,
        "A request carries at most this many rows (the Stream API's ceiling is 50000).")
    public static let batchMaxBytes = ConfigKey(
        "batch.max_bytes", \.batch.maxBytes, .size, .atOnce,
        "Request body size before compression (ceiling 10MB, the Stream API's limit).")
    public static let batchLinger = ConfigKey(
        "batch.linger", \.batch.linger, .duration, .atOnce,
        "A batch goes when full, or when its oldest record has waited this long.")
    public static let batchCompression = ConfigKey(
        "batch.compression", \.batch.compression, .choice, .atOnce,
        "Body compression of requests to the API.")
    public static let batchGzipLevel = ConfigKey(
        "batch.gzip_level", \.batch.gzipLevel, .int, .atOnce,
        "1 (fastest) to 9 (smallest).")
    public static let batchFormat = ConfigKey(
        "batch.format", \.batch.format, .choice, .atOnce,
        "\"json\" ({\"data\":[…],\"config\":{…}}) or \"ndjson\" (config in query parameters).")
    public static let batchConcurrency = ConfigKey(
        "batch.concurrency", \.batch.concurrency, .int, .atOnce,
        "Batches in flight at once per append target (merge targets send one at a time).")
    public static let batchMaxInFlight = ConfigKey(
        "batch.max_in_flight", \.batch.maxInFlight, .int, .restart,
        "Requests in flight to the API at once over all targets: the ceiling of the adaptive limit.")

    // [retry]
    public static let retryInitial = ConfigKey(
        "retry.initial", \.retry.initial, .duration, .atOnce,
        "The first backoff after a failure that may succeed later (exponential, full jitter).")
    public static let retryMax = ConfigKey(
        "retry.max", \.retry.max, .duration, .atOnce,
        "The longest backoff.")
    public static let retryMaxAge = ConfigKey(
        "retry.max_age", \.retry.maxAge, .duration, .atOnce,
        "Rows older than this stop being retried and are dead-lettered as \"expired\".")

    // [service]
    public static let serviceDrainTimeout = ConfigKey(
        "service.drain_timeout", \.service.drainTimeout, .duration, .restart,
        "On SIGTERM, how long a request in flight to the API may take before the daemon exits anyway.")

    // [metrics]
    public static let metricsListen = ConfigKey(
        "metrics.listen", optional: \.metrics.listen, .string, .restart,
        "An opt-in Prometheus endpoint: \"127.0.0.1:9464\" or a Unix socket path.",
        comment: { $0.metrics.listen == nil ? "no metrics endpoint" : nil })

    // [log]
    public static let logLevel = ConfigKey(
        "log.level", \.log.level, .choice, .restart,
        "The least severe level logged (overridden by run --log-level).")
    public static let logFormat = ConfigKey(
        "log.format", \.log.format, .choice, .restart,
        "\"logfmt\" (message first, then key=value) or \"json\" (one object per line).")

    /// Every key, in the order of the file: sections appear in this order, and keys are read, compared on
    /// reload and rendered in this order.
    public static let all: [ConfigKey] = [
        .apiURL, .apiKeyFile, .apiTimeout,
        .spoolPath, .spoolMaxBytes, .spoolDurability, .spoolDiskReserve, .spoolGroup,
        .intakeSocket, .intakeSocketMode, .intakeDefaultTable, .intakeMaxLineBytes, .intakeAllowUIDs, .intakeAllowGIDs,
        .intakeHTTPSocket, .intakeHTTPListen, .intakeHTTPAllowRemote, .intakeHTTPToken, .intakeDatagramSocket,
        .intakeWaitTimeout,
        .tables,
        .batchMaxRows, .batchMaxBytes, .batchLinger, .batchCompression, .batchGzipLevel, .batchFormat, .batchConcurrency,
        .batchMaxInFlight,
        .retryInitial, .retryMax, .retryMaxAge,
        .serviceDrainTimeout,
        .metricsListen,
        .logLevel, .logFormat,
    ]

    /// The sections of ``all``, in order, each with its keys.
    package static let sections: [(name: String, keys: [ConfigKey])] = all.reduce(into: []) { sections, key in
        if sections.last?.name == key.section {
            sections[sections.count - 1].keys.append(key)
        } else {
            sections.append((key.section, [key]))
        }
    }
}

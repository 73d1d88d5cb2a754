import Logging

/// The agent's whole configuration, as read from `agent.toml` (see `etc/definite-agent/agent.toml`).
///
/// Every value has an embedded default, so an empty file is a valid configuration.
/// ``ConfigurationLoader`` builds one from TOML and rejects unknown keys and bad values;
/// the API key itself is never part of this value (see ``APIKeySource``).
public struct AgentConfiguration: Sendable, Equatable {
    /// `[api]`: where and how to reach the Stream API.
    public struct API: Sendable, Equatable {
        public var url = "https://api.definite.app/v2/stream"
        /// A file holding the API key. When unset, `$DEFINITE_API_KEY`, then `$CREDENTIALS_DIRECTORY/api-key`.
        public var keyFile: String?
        /// Where `key_file` was set, so an error about the key file names that file and line like every
        /// other configuration error (the key is read after the file, at start and on SIGHUP).
        public var keyFileLocation: ConfigurationLocation?
        public var timeout = HumanDuration.seconds(30)
    }

    /// How hard a commit tries to reach stable storage before the agent acknowledges a write.
    public enum Durability: String, Sendable, Equatable, CaseIterable {
        /// `synchronous=FULL`: the WAL is fsynced before every acknowledgement. Survives power loss.
        case full
        /// `synchronous=NORMAL`: committed to the WAL (survives `kill -9`), fsynced at checkpoints only.
        case normal
    }

    /// `[spool]`: the durable queue on local disk.
    public struct Spool: Sendable, Equatable {
        public var path = "/var/lib/definite-agent/spool.db"
        /// Records held (pending plus dead letters) may not exceed this; further writes get status 507.
        public var maxBytes = ByteSize.gibibytes(1)
        public var durability = Durability.full
        /// Free space kept on the spool's filesystem so delivery can always record its progress and
        /// drain a full disk; intake gets 507 before it would use it. `nil` ("auto"): 5% of the
        /// filesystem's size, at most 64 MiB.
        public var diskReserve: ByteSize?
        /// A group (name or numeric id) that may read the spool: its files are then `0640` and belong to it.
        /// `nil`: the daemon's user only (`0600`). See ``SpoolAccess``.
        public var group: String?
    }

    /// `[intake]`: the Unix stream socket local programs write to.
    public struct Intake: Sendable, Equatable {
        public var socket = "/run/definite-agent/agent.sock"
        public var socketMode: UInt32 = 0o660
        /// The table that plain records (lines without a `config` object) go to.
        public var defaultTable: String?
        public var maxLineBytes = ByteSize.mebibytes(16)
        /// When set, only peers with one of these uids (or one of `allowGIDs`) may write; checked with
        /// `SO_PEERCRED` when they connect. Both empty: anyone who can open the socket may write.
        public var allowUIDs: [UInt32] = []
        public var allowGIDs: [UInt32] = []
        /// The local Stream API (HTTP) on a Unix socket; empty: off.
        public var httpSocket = "/run/definite-agent/http.sock"
        /// The local Stream API on a TCP address too, e.g. "127.0.0.1:8787" (loopback only unless
        /// `httpAllowRemote`).
        public var httpListen: String?
        public var httpAllowRemote = false
        /// When set, HTTP requests must carry `Authorization: Bearer <token>`.
        public var httpToken: String?
        /// A Unix datagram socket taking one request per datagram, never answered; unset: off.
        public var datagramSocket: String?
        /// How long a local Stream API request with `config.wait = true` waits for the API to commit its rows
        /// before it is answered 202 (durable here, not yet committed there).
        public var waitTimeout = HumanDuration.seconds(30)
    }

    /// Ingestion mode of a target table, as the Stream API defines it.
    public enum Mode: String, Sendable, Hashable, CaseIterable {
        case append
        case merge
    }

    /// `[[table]]`: defaults for requests that name a table without a mode.
    public struct TableDefaults: Sendable, Equatable {
        public var name: String
        public var mode: Mode
        public var primaryKey: String?
    }

    /// Body compression for requests to the API.
    public enum Compression: String, Sendable, Equatable, CaseIterable {
        case gzip
        case none
    }

    /// Body format for requests to the API.
    public enum BodyFormat: String, Sendable, Equatable, CaseIterable {
        /// `{"data":[…],"config":{…}}`, the fully documented form.
        case json
        /// One record per line; config in query parameters.
        case ndjson
    }

    /// `[batch]`: how the flusher cuts requests.
    public struct Batch: Sendable, Equatable {
        public var maxRows = 50_000
        /// Request body size before compression. Each request in flight holds about this much memory
        /// (the records, plus a quarter of it for the gzip output): 4 MiB keeps two workers well inside
        /// the daemon's memory target and delivered faster in the bench than 8 MiB did.
        public var maxBytes = ByteSize.mebibytes(4)
        public var linger = HumanDuration.seconds(1)
        public var compression = Compression.gzip
        public var gzipLevel = 6
        public var format = BodyFormat.json
        /// Batches in flight at once per append target (merge targets always have one).
        public var concurrency = 6
        /// Requests in flight to the API at once, over all targets: the ceiling of the adaptive limit.
        public var maxInFlight = 64
    }

    /// `[retry]`: backoff for failures that may succeed later.
    public struct Retry: Sendable, Equatable {
        public var initial = HumanDuration(milliseconds: 500)
        public var max = HumanDuration.seconds(60)
        /// Rows older than this stop being retried and are dead-lettered as "expired".
        public var maxAge = HumanDuration.seconds(7 * 86_400)
    }

    /// `[service]`: how the daemon runs.
    public struct ServiceSettings: Sendable, Equatable {
        /// On SIGTERM, how long a request in flight to the API may take before the daemon exits anyway
        /// (the batch stays in the spool and is sent at the next start).
        public var drainTimeout = HumanDuration.seconds(10)
    }

    /// `[metrics]`: the opt-in Prometheus endpoint.
    public struct MetricsSettings: Sendable, Equatable {
        /// `"127.0.0.1:9464"` or a Unix socket path; unset: no endpoint, and no metrics are collected.
        public var listen: String?
    }

    /// `[log]`: what the daemon writes to stderr.
    public struct Log: Sendable, Equatable {
        public var level = Logger.Level.info
        /// `logfmt` (message first, then `key=value`) or `json` (one object per line); see ``AgentLogHandler``.
        public var format = AgentLogHandler.Format.logfmt
    }

    public var api = API()
    public var spool = Spool()
    public var intake = Intake()
    public var tables: [TableDefaults] = []
    public var batch = Batch()
    public var retry = Retry()
    public var service = ServiceSettings()
    public var metrics = MetricsSettings()
    public var log = Log()

    public init() {}

    /// The defaults configured for `table`, if any.
    public func tableDefaults(for table: String) -> TableDefaults? {
        let name = TableName.caseFolded(table)
        return tables.first { TableName.caseFolded($0.name) == name }
    }
}

/// A place in a configuration file: the file (when there is one) and the 1-based line.
public struct ConfigurationLocation: Sendable, Equatable {
    public var file: String?
    public var line: Int?

    public init(file: String?, line: Int?) {
        self.file = file
        self.line = line
    }
}

/// The Stream API's documented limits, in one place.
///
/// "MB" in the reference is read as decimal megabytes, the stricter reading, so that what the agent
/// accepts is always accepted by the API.
public enum StreamAPILimits {
    public static let maxBodyBytes = 10_000_000
    public static let maxRowsPerRequest = 50_000
    /// The compact JSON encoding of any top-level field value of a row.
    public static let maxFieldBytes = 1_000_000
    /// A scalar has depth 0; an object or array 1 + the deepest child. A row is an object, so depth ≥ 1.
    public static let maxDepth = 10
    /// Room a request's JSON envelope (`{"data":[…],"config":{…}}`, without tags) takes around its rows.
    public static let requestEnvelopeBytes = 1024
    /// The largest row (compact JSON) a request can carry: alone, in its envelope, within the body limit.
    /// A larger one could never be delivered, so intake refuses it rather than dead-letter it later.
    public static let maxRowBytes = maxBodyBytes - requestEnvelopeBytes
}

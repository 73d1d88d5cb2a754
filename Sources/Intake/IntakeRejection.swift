import Spool

/// Why the agent refused a request, with the HTTP-style status the Stream API would give for it.
///
/// Sent back to the writer as `{"ack":…,"ok":false,"status":…,"error":…}` (or with `"line"` when the
/// request carried no ack). ``code`` is stable for programs; ``message`` says what, where and which limit.
public struct IntakeRejection: Error, Sendable, Equatable, CustomStringConvertible {
    /// A stable, machine-readable reason: a closed catalogue, each code with its one status.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Reason: String, CaseIterable, Sendable {
            case invalidJSON = "invalid_json"
            case invalidUTF8 = "invalid_utf8"
            case tooDeep = "too_deep"
            case invalidRow = "invalid_row"
            case missingPrimaryKey = "missing_primary_key"
            case invalidTable = "invalid_table"
            case invalidEncoding = "invalid_encoding"
            case notFound = "not_found"
            case methodNotAllowed = "method_not_allowed"
            case unauthorized
            case peerNotAllowed = "peer_not_allowed"
            case fieldTooLarge = "field_too_large"
            case rowTooLarge = "row_too_large"
            case tooManyRows = "too_many_rows"
            case lineTooLong = "line_too_long"
            case bodyTooLarge = "body_too_large"
            case invalidConfig = "invalid_config"
            case spoolFull = "spool_full"
            case storageFailed = "storage_failed"
            case busy
            case shuttingDown = "shutting_down"
        }

        private let reason: Reason

        /// Not JSON (also a request line that is not one JSON text).
        public static let invalidJSON = Code(reason: .invalidJSON)
        /// Invalid UTF-8 (overlong forms, surrogates, unpaired `\u` surrogates, raw control characters).
        public static let invalidUTF8 = Code(reason: .invalidUTF8)
        /// A row nested deeper than the Stream API's limit of 10.
        public static let tooDeep = Code(reason: .tooDeep)
        /// `data` is not objects, or is empty.
        public static let invalidRow = Code(reason: .invalidRow)
        /// A merge row without its key, or with a null key.
        public static let missingPrimaryKey = Code(reason: .missingPrimaryKey)
        /// A table name that is not `schema.table` or `LAKE.schema.table`.
        public static let invalidTable = Code(reason: .invalidTable)
        /// A local Stream API body that is not valid gzip, or in an encoding other than gzip.
        public static let invalidEncoding = Code(reason: .invalidEncoding)
        /// A local Stream API path other than `/v2/stream` (and the health probes).
        public static let notFound = Code(reason: .notFound)
        /// A method other than POST on `/v2/stream`.
        public static let methodNotAllowed = Code(reason: .methodNotAllowed)
        /// A missing or wrong `Authorization` when `[intake] http_token` is set.
        public static let unauthorized = Code(reason: .unauthorized)
        /// A line-socket peer that `[intake] allow_uids`/`allow_gids` does not list.
        public static let peerNotAllowed = Code(reason: .peerNotAllowed)
        /// A top-level field over the Stream API's 1 MB.
        public static let fieldTooLarge = Code(reason: .fieldTooLarge)
        /// A row whose compact JSON passes what one request can carry (``StreamAPILimits/maxRowBytes``).
        public static let rowTooLarge = Code(reason: .rowTooLarge)
        /// More than the Stream API's 50,000 rows in one request.
        public static let tooManyRows = Code(reason: .tooManyRows)
        /// A line over `[intake] max_line_bytes`, or a datagram over its limit.
        public static let lineTooLong = Code(reason: .lineTooLong)
        /// A local Stream API body (after gzip) over the Stream API's 10 MB.
        public static let bodyTooLarge = Code(reason: .bodyTooLarge)
        /// A request's `config` the Stream API would refuse (merge without one key column, no table, …).
        public static let invalidConfig = Code(reason: .invalidConfig)
        /// No room: `[spool] max_bytes` reached, or the disk down to `[spool] disk_reserve`.
        public static let spoolFull = Code(reason: .spoolFull)
        /// The spool's commit failed.
        public static let storageFailed = Code(reason: .storageFailed)
        /// The agent already holds as much unfinished input (lines without their newline yet, request bodies
        /// still arriving) from all connections as it keeps (``UnfinishedInputBudget``); retry.
        public static let busy = Code(reason: .busy)
        /// The agent is stopping.
        public static let shuttingDown = Code(reason: .shuttingDown)

        /// Every code, in the README's order.
        public static var all: [Code] { Reason.allCases.map(Code.init(reason:)) }

        /// The code as programs read it (`"invalid_json"`).
        public var rawValue: String { reason.rawValue }
        public var description: String { reason.rawValue }

        /// The HTTP status the Stream API gives for this reason: chosen here, and only here.
        public var status: Int {
            switch reason {
            case .invalidJSON, .invalidUTF8, .tooDeep, .invalidRow, .missingPrimaryKey, .invalidTable, .invalidEncoding: 400
            case .unauthorized: 401
            case .peerNotAllowed: 403
            case .notFound: 404
            case .methodNotAllowed: 405
            case .fieldTooLarge, .rowTooLarge, .tooManyRows, .lineTooLong, .bodyTooLarge: 413
            case .invalidConfig: 422
            case .storageFailed: 500
            case .busy, .shuttingDown: 503
            case .spoolFull: 507
            }
        }
    }

    public var code: Code
    public var message: String
    /// The spool's error underneath, for a request the spool could not store.
    public var cause: SpoolWriteError?

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The answer for a batch the spool writer did not store.
    public init(_ error: SpoolWriteError) {
        switch error.code.reason {
        case .stopping: code = .shuttingDown
        case .diskFull: code = .spoolFull
        case .storage: code = .storageFailed
        }
        message = error.message
        if code == .storageFailed, let cause = error.cause { message += " (\(cause))" }
        self.cause = error
    }

    /// The answer for a batch whose promise failed: the spool's error, mapped; anything else is a storage
    /// failure with its text.
    public init(submissionFailure error: any Error) {
        if let error = error as? SpoolWriteError {
            self.init(error)
        } else {
            self.init(.storageFailed, "\(error)")
        }
    }

    /// The HTTP status of ``code``.
    public var status: Int { code.status }

    public var description: String { "\(status) \(code): \(message)" }

    public static func == (lhs: IntakeRejection, rhs: IntakeRejection) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }
}

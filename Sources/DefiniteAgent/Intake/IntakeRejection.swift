/// Why the agent refused a request, with the HTTP-style status the Stream API would give for it.
///
/// Sent back to the writer as `{"ack":…,"ok":false,"status":…,"error":…}` (or with `"line"` when the
/// request carried no ack). ``code`` is stable for programs; ``message`` says what, where and which limit.
public struct IntakeRejection: Error, Sendable, Equatable, CustomStringConvertible {
    /// A stable, machine-readable reason.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidJSON = Code(rawValue: "invalid_json")
        public static let invalidUTF8 = Code(rawValue: "invalid_utf8")
        public static let tooDeep = Code(rawValue: "too_deep")
        public static let invalidRow = Code(rawValue: "invalid_row")
        public static let missingPrimaryKey = Code(rawValue: "missing_primary_key")
        public static let invalidTable = Code(rawValue: "invalid_table")
        public static let fieldTooLarge = Code(rawValue: "field_too_large")
        public static let tooManyRows = Code(rawValue: "too_many_rows")
        public static let lineTooLong = Code(rawValue: "line_too_long")
        public static let invalidConfig = Code(rawValue: "invalid_config")
        public static let spoolFull = Code(rawValue: "spool_full")
        public static let storageFailed = Code(rawValue: "storage_failed")
        public static let shuttingDown = Code(rawValue: "shutting_down")

        /// Every code intake gives, in the README's order.
        public static let all: [Code] = [
            .invalidJSON, .invalidUTF8, .tooDeep, .invalidRow, .missingPrimaryKey, .invalidTable, .fieldTooLarge,
            .tooManyRows, .lineTooLong, .invalidConfig, .spoolFull, .storageFailed, .shuttingDown,
        ]
    }

    public var status: Int
    public var code: Code
    public var message: String

    public init(status: Int, code: Code, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public var description: String { "\(status) \(code): \(message)" }

    static func badRequest(_ code: Code, _ message: String) -> IntakeRejection {
        IntakeRejection(status: 400, code: code, message: message)
    }

    static func tooLarge(_ code: Code, _ message: String) -> IntakeRejection {
        IntakeRejection(status: 413, code: code, message: message)
    }

    static func invalidConfig(_ message: String) -> IntakeRejection {
        IntakeRejection(status: 422, code: .invalidConfig, message: message)
    }
}

/// Why the spool writer did not store a batch. Nothing of a failed batch is stored: the writer's commit
/// is all or nothing, and a batch refused before its commit never reaches the database.
///
/// The spool speaks of storage only; intake turns the code into its answer (``Code/reason`` is an enum, so
/// that mapping is checked to be exhaustive by the compiler).
public struct SpoolWriteError: Error, Sendable, CustomStringConvertible {
    /// The closed catalogue of reasons.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The reasons, for code in this package that must handle each (intake's answer).
        package enum Reason: String, Hashable, Sendable {
            case stopping
            case diskFull = "disk_full"
            case storage
        }

        package let reason: Reason

        /// The writer is stopping (the daemon is shutting down): the batch was not queued.
        public static let stopping = Code(reason: .stopping)
        /// The disk holding the spool is full, or at its reserve kept for delivery.
        public static let diskFull = Code(reason: .diskFull)
        /// The commit failed (I/O error, corrupt page, …); ``SpoolWriteError/cause`` has SQLite's error.
        public static let storage = Code(reason: .storage)

        public var description: String { reason.rawValue }
    }

    public var code: Code
    /// What happened, for the writer's answer and the log.
    public var message: String
    /// The error underneath (SQLite's), when there was one.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        "\(code): \(message)" + (cause.map { " (\($0))" } ?? "")
    }
}

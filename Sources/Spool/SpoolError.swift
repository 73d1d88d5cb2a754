/// A spool that cannot be opened or written: what, where, and what to do about it.
public struct SpoolError: Error, CustomStringConvertible, Sendable {
    /// A stable, machine-readable kind of spool error.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code as logs and programs read it.
        public let rawValue: String
        /// Private: the catalogue is closed, every code is one of the static members below.
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let notASpool = Code("spool.not_a_spool")
        public static let newerSchema = Code("spool.newer_schema")
        /// Written by an earlier release and not yet upgraded: only the daemon migrates a spool.
        public static let olderSchema = Code("spool.older_schema")
        public static let cannotOpen = Code("spool.cannot_open")
        public static let corrupt = Code("spool.corrupt")
        public static let storage = Code("spool.storage")
        public static let missing = Code("spool.missing")
    }

    /// `EX_DATAERR`-like: the file is not usable as it is.
    public static let exitCode: Int32 = 65

    public var code: Code
    public var path: String
    public var message: String
    /// The error underneath (SQLite's, or a system call's), when there was one; ``message`` quotes what
    /// of it the operator needs.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, path: String, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.path = path
        self.message = message
        self.cause = cause
    }

    public var description: String { "spool \(path): \(message)" }
}

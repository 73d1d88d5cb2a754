/// A spool that cannot be opened or written: what, where, and what to do about it.
public struct SpoolError: Error, CustomStringConvertible, Sendable {
    /// A stable, machine-readable kind of spool error.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let notASpool = Code(rawValue: "spool.not_a_spool")
        public static let newerSchema = Code(rawValue: "spool.newer_schema")
        public static let cannotOpen = Code(rawValue: "spool.cannot_open")
        public static let corrupt = Code(rawValue: "spool.corrupt")
        public static let storage = Code(rawValue: "spool.storage")
        public static let missing = Code(rawValue: "spool.missing")
    }

    /// `EX_DATAERR`-like: the file is not usable as it is.
    public static let exitCode: Int32 = 65

    public var code: Code
    public var path: String
    public var message: String

    public init(_ code: Code, path: String, _ message: String) {
        self.code = code
        self.path = path
        self.message = message
    }

    public var description: String { "spool \(path): \(message)" }
}

/// A configuration that cannot be used: the file, a key, or a value.
///
/// Always names the key (as `section.key`) and, where it can be found, the line.
/// Commands exit with ``exitCode`` (78, `EX_CONFIG`) on it.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A stable, machine-readable kind of configuration error.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code as logs and programs read it.
        public let rawValue: String
        /// Private: the catalogue is closed, every code is one of the static members below.
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let unreadableFile = Code("config.unreadable_file")
        public static let syntax = Code("config.syntax")
        public static let unknownKey = Code("config.unknown_key")
        public static let wrongType = Code("config.wrong_type")
        public static let invalidValue = Code("config.invalid_value")
        public static let unusablePath = Code("config.unusable_path")
        public static let missingKey = Code("config.missing_api_key")
    }

    /// `EX_CONFIG` from sysexits.h.
    public static let exitCode: Int32 = 78

    public var code: Code
    /// The offending key as `section.key`, when there is one.
    public var key: String?
    public var line: Int?
    public var file: String?
    public var message: String

    public init(_ code: Code, key: String? = nil, line: Int? = nil, file: String? = nil, _ message: String) {
        self.code = code
        self.key = key
        self.line = line
        self.file = file
        self.message = message
    }

    public var description: String {
        var location = file ?? "configuration"
        if let line { location += ":\(line)" }
        if let key { return "\(location): \(key): \(message)" }
        return "\(location): \(message)"
    }
}

#if canImport(Glibc)
    import Glibc
#endif

/// A part of the daemon that could not start: which (its socket path or address), why (the system's
/// words for it, e.g. "Address already in use"), and what to do when there is something to do. The
/// daemon exits with ``exitCode``: 71 (`EX_OSERR`), the README's code for an unusable socket path or
/// address.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    /// A stable, machine-readable kind of start-up failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code as logs and programs read it.
        public let rawValue: String
        /// Private: the catalogue is closed, every code is one of the static members below.
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// Another process listens on the socket path.
        public static let pathInUse = Code("startup.path_in_use")
        /// The path is held by a socket systemd passed to this very process, under a name the daemon did not
        /// take for it.
        public static let pathHeldByPassedSocket = Code("startup.path_held_by_passed_socket")
        /// The path cannot take a socket: its directory cannot be made, a file is in the way, the name is
        /// too long, or bind/chmod failed.
        public static let pathUnusable = Code("startup.path_unusable")
        /// The TCP address cannot be listened on: the port is in use, the host does not resolve, or bind
        /// failed.
        public static let addressUnusable = Code("startup.address_unusable")
        /// A socket systemd passed is not of the kind its name says.
        public static let passedSocketUnusable = Code("startup.passed_socket_unusable")
        /// Another daemon runs on the spool (it holds the spool's lock file).
        public static let spoolInUse = Code("startup.spool_in_use")
    }

    /// `EX_OSERR` from sysexits.h.
    public static let exitCode: Int32 = 71

    public var code: Code
    /// What could not start, as an operator finds it in the configuration: "intake socket /run/…".
    public var part: String
    /// Why, in words.
    public var reason: String
    /// The `errno` behind it, when there is one.
    public var errno: Int32?
    /// The error underneath (NIO's, a name resolution's), when there was one; ``reason`` quotes it.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, part: String, _ reason: String, errno: Int32? = nil, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.part = part
        self.reason = reason
        self.errno = errno
        self.cause = cause
    }

    /// A failed system call: `reason` followed by the system's text for `errno`.
    package static func systemCall(_ code: Code, part: String, _ reason: String, errno: Int32) -> StartupError {
        StartupError(code, part: part, "\(reason): \(SystemCallError(errno))", errno: errno)
    }

    public var description: String { "cannot start the \(part): \(reason)" }
}

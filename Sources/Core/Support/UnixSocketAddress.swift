#if canImport(Glibc)
    import Glibc
#endif

/// A Unix socket address (`sockaddr_un`): the one place the agent builds one, for `bind`, `connect` and
/// `sendto`.
///
/// A path must leave room for its terminating NUL in `sun_path` (108 bytes on Linux: at most 107 bytes of
/// path). Where the abstract namespace is allowed (systemd's `NOTIFY_SOCKET` may name one), a name starting
/// with `@` is in it: the `@` becomes a NUL and the address is exactly as long as the name. Elsewhere (the
/// agent's own sockets, which are files) `@` is an ordinary first character of a relative path.
package struct UnixSocketAddress: Sendable, Equatable {
    /// The longest path (or abstract name, `@` included) an address can hold.
    package static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    private let bytes: [UInt8]
    private let isAbstract: Bool

    /// `nil` when `path` is empty or does not fit.
    package init?(_ path: String, abstractNamespace: Bool = false) {
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maxPathBytes else { return nil }
        isAbstract = abstractNamespace && bytes[0] == UInt8(ascii: "@")
        if isAbstract { bytes[0] = 0 }
        self.bytes = bytes
    }

    /// Calls `body` with the address and its length.
    package func withSockAddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length =
            isAbstract
            ? socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
            : socklen_t(MemoryLayout<sockaddr_un>.size)
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }
}

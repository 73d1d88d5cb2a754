import Core
import FoundationEssentials
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// The kind of socket a listener takes.
enum SocketKind: String, Sendable {
    /// `SOCK_STREAM`: the line protocol, the local Stream API, metrics.
    case stream
    /// `SOCK_DGRAM`: datagram intake.
    case datagram

    var socketType: Int32 { self == .stream ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue) }

    /// Whether `fd` is a socket of this kind ready for a listener: listening (a stream) or bound (a datagram).
    func isReady(_ fd: Int32) -> Bool {
        guard Self.option(fd, SO_TYPE) == socketType else { return false }
        return self == .datagram || Self.option(fd, SO_ACCEPTCONN) == 1
    }

    /// The filesystem path a Unix socket is bound to; `nil` for other sockets and unnamed ones.
    static func boundPath(of fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let pathLength = Int(length) - MemoryLayout<sa_family_t>.size
        guard pathLength > 1 else { return nil }
        let path = withUnsafeBytes(of: address.sun_path) { String(decoding: $0.prefix(pathLength).prefix { $0 != 0 }, as: UTF8.self) }
        return path.isEmpty ? nil : path
    }

    private static func option(_ fd: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
    }
}

/// A socket made ready for one listener, before the listener takes it over: bound by the daemon (and
/// listening, for a stream), or passed by systemd.
///
/// Sockets the daemon makes are close-on-exec, so a child process never inherits a listener. A path the
/// daemon bound is the listener's to remove when it stops; a passed socket's path never is (systemd keeps
/// it listening across restarts).
///
/// - Important: One owner at a time: until a listener takes ``fd`` over (NIO's `withBoundSocket`, the
///   datagram thread), whoever holds the value must ``discard()`` it if the listener does not start.
struct ListeningSocket: Sendable {
    /// Who made the socket, and so how it is described and what its failures are called.
    enum Origin: Sendable {
        /// Bound by the daemon on a Unix socket path.
        case path
        /// Bound by the daemon on a TCP address.
        case address
        /// Passed by systemd.
        case passed

        /// What a failure to take the socket over is called.
        var failure: StartupError.Code {
            switch self {
            case .path: .pathUnusable
            case .address: .addressUnusable
            case .passed: .passedSocketUnusable
            }
        }
    }

    let fd: Int32
    let kind: SocketKind
    let origin: Origin
    /// The path the daemon bound, to remove when the listener stops.
    let ownedPath: String?
    /// Where it listens, for the log: a path, an address, or the passed descriptor.
    let location: String
    /// The part of the daemon it is for, to name it in errors: "intake socket /run/…".
    let part: String

    /// A Unix socket at `path`, created by the daemon: its directory is created if need be, a stale socket
    /// file left by a crash is replaced, and `mode` is applied.
    static func unix(
        path: String, kind: SocketKind, mode: UInt32, backlog: Int32, part: String, passedSockets: PassedSockets
    ) throws(StartupError) -> ListeningSocket {
        try SocketPath.prepare(path, kind: kind, part: part, passedSockets: passedSockets)
        let fd = socket(AF_UNIX, kind.socketType | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .systemCall(.pathUnusable, part: part, "cannot create a socket", errno: errno) }
        let bound = SocketPath.withAddress(of: path) { Glibc.bind(fd, $0, $1) }
        guard let bound else {
            close(fd)
            throw StartupError(
                .pathUnusable, part: part, "the path is longer than a socket address holds (\(UnixSocketAddress.maxPathBytes) bytes)")
        }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw .systemCall(error == EADDRINUSE ? .pathInUse : .pathUnusable, part: part, "cannot bind it", errno: error)
        }
        let socket = ListeningSocket(fd: fd, kind: kind, origin: .path, ownedPath: path, location: path, part: part)
        guard chmod(path, mode_t(mode)) == 0 else {
            let error = errno
            socket.discard()
            throw .systemCall(.pathUnusable, part: part, "cannot set its mode to \(String(mode, radix: 8))", errno: error)
        }
        if kind == .stream, listen(fd, backlog) != 0 {
            let error = errno
            socket.discard()
            throw .systemCall(.pathUnusable, part: part, "cannot listen on it", errno: error)
        }
        return socket
    }

    /// A TCP socket listening on `host:port` (`host` is resolved; a port in use is an error, not a wait).
    ///
    /// - Note: Resolving a host name may block: call it off the event loops and the cooperative pool.
    static func tcp(host: String, port: Int, backlog: Int32, part: String) throws(StartupError) -> ListeningSocket {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw StartupError(.addressUnusable, part: part, "cannot resolve \(host): \(error)", cause: error)
        }
        let family = address.protocol.rawValue
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .systemCall(.addressUnusable, part: part, "cannot create a socket", errno: errno) }
        var on: Int32 = 1
        // Restarting while old connections linger in TIME_WAIT must not fail; a port another process
        // listens on still does.
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let socket = ListeningSocket(
            fd: fd, kind: .stream, origin: .address, ownedPath: nil, location: address.plainDescription, part: part)
        guard address.withSockAddr({ Glibc.bind(fd, $0, socklen_t($1)) }) == 0 else {
            let error = errno
            socket.discard()
            throw .systemCall(.addressUnusable, part: part, error == EADDRINUSE ? "port \(port) is in use" : "cannot bind it", errno: error)
        }
        guard listen(fd, backlog) == 0 else {
            let error = errno
            socket.discard()
            throw .systemCall(.addressUnusable, part: part, "cannot listen on it", errno: error)
        }
        return socket
    }

    /// A socket systemd passed, checked to be of the kind the listener needs.
    static func passed(_ passed: PassedSocket, kind: SocketKind, part: String) throws(StartupError) -> ListeningSocket {
        guard kind.isReady(passed.fd) else {
            let expected = kind == .stream ? "a listening stream socket" : "a datagram socket"
            throw StartupError(.passedSocketUnusable, part: part, "the socket systemd passed (\(passed)) is not \(expected)")
        }
        if kind == .datagram {
            // The datagram thread reads with a timeout; systemd may pass the socket non-blocking.
            let flags = fcntl(passed.fd, F_GETFL)
            if flags >= 0 { _ = fcntl(passed.fd, F_SETFL, flags & ~O_NONBLOCK) }
        }
        return ListeningSocket(
            fd: passed.fd, kind: kind, origin: .passed, ownedPath: nil, location: "\(passed) passed by systemd", part: part)
    }

    /// Closes a socket no listener took over, and removes the path the daemon bound for it.
    func discard() {
        close(fd)
        removeOwnedPath()
    }

    /// Removes the path the daemon bound (once the listener closed the socket); a passed socket's path stays.
    func removeOwnedPath() {
        if let ownedPath { unlink(ownedPath) }
    }
}

/// Checks and prepares the filesystem path of a Unix socket the daemon is about to bind.
package enum SocketPath {
    /// Creates the parent directory, and removes a stale socket file left by a crash; but never a file that
    /// is not a socket, nor a socket something listens on: another process, or a socket systemd passed to
    /// this one (which is then named, since the daemon would otherwise blame "another process" for its own
    /// descriptor).
    static func prepare(_ path: String, kind: SocketKind, part: String, passedSockets: PassedSockets) throws(StartupError) {
        let directory = FileSystem.parentDirectory(of: path)
        if !directory.isEmpty, !FileSystem.exists(directory) {
            do {
                try FileSystem.createDirectories(directory)
            } catch {
                throw StartupError(.pathUnusable, part: part, "cannot create its directory \(directory): \(error)", cause: error)
            }
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw StartupError(.pathUnusable, part: part, "a file that is not a socket is in the way; remove it or configure another path")
        }
        guard !isStale(path, kind: kind) else {
            unlink(path)
            return
        }
        if let holder = passedSockets.holder(of: path) {
            throw StartupError(
                .pathHeldByPassedSocket, part: part,
                """
                it is held by a socket systemd passed to this process (\(holder)), which the daemon does not use for it; \
                with several passed sockets, name each (FileDescriptorName=intake, http or datagram)
                """)
        }
        throw StartupError(.pathInUse, part: part, "another process is listening on it (is definite-agent already running?)")
    }

    /// Whether the socket at `path` is left by a process that ended: connecting to it is refused. A socket
    /// that takes the connection, or refuses it for any other reason (`EPROTOTYPE`: a live socket of the
    /// other kind, another program's or this daemon's own on another listener), is in use and stays.
    static func isStale(_ path: String, kind: SocketKind) -> Bool {
        let fd = socket(AF_UNIX, kind.socketType | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withAddress(of: path) { connect(fd, $0, $1) != 0 && errno == ECONNREFUSED } ?? false
    }

    /// Calls `body` with `path` as a socket address (for `bind` or `connect`); `nil` when the path does not
    /// fit (``UnixSocketAddress/maxPathBytes``).
    package static func withAddress<Result>(of path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result? {
        UnixSocketAddress(path)?.withSockAddr(body)
    }
}

import FoundationEssentials

#if canImport(Glibc)
    import Glibc
#endif

/// One socket systemd passed to the daemon (socket activation, `sd_listen_fds(3)`).
package struct PassedSocket: Sendable, Equatable, CustomStringConvertible {
    package var fd: Int32
    /// Its `LISTEN_FDNAMES` entry (`FileDescriptorName=`); empty when none was given.
    package var name: String
    /// The filesystem path it is bound to, for a Unix socket with one.
    package var path: String?

    package var description: String { "fd \(fd)\(name.isEmpty ? "" : " named \"\(name)\"")\(path.map { " on \($0)" } ?? "")" }
}

/// The sockets systemd passed, sorted out for the listeners that use them.
///
/// - A single passed socket named `http` or `datagram` is that listener's; any other single socket is the
///   intake socket, whatever its name: `systemd-socket-activate -l PATH` without `--fdname`, or a socket
///   unit without `FileDescriptorName=`, passes one unnamed socket (or one named after the unit), and the
///   line protocol is what such a setup means. (A lone `ListenDatagram=` socket named `datagram` was taken
///   for the intake socket, and the daemon refused to start.)
/// - With several, names decide: `intake` (the line protocol), `http` (the local Stream API) and
///   `datagram`. Any other name, or a name given twice, is not used: it is logged and closed, so no socket
///   lingers unserved with writers queueing in it.
///
/// A passed socket is never removed from the filesystem by the daemon: systemd keeps it listening while
/// the daemon restarts.
package struct PassedSockets: Sendable, Equatable {
    /// What the daemon uses a passed socket for.
    package enum Role: String, Sendable, CaseIterable {
        case intake, http, datagram
    }

    package private(set) var assigned: [Role: PassedSocket] = [:]
    /// Passed sockets that no listener takes.
    package private(set) var unused: [PassedSocket] = []
    /// Every passed socket with a path, used or not, to explain a path that turns out to be taken.
    package private(set) var all: [PassedSocket] = []

    /// Sorts `passed` out (pure: see the type's rules).
    package init(_ passed: [PassedSocket]) {
        all = passed
        if passed.count == 1 {
            let role = Role(rawValue: passed[0].name).flatMap { $0 == .intake ? nil : $0 } ?? .intake
            assigned[role] = passed[0]
            return
        }
        for socket in passed {
            if let role = Role(rawValue: socket.name), assigned[role] == nil {
                assigned[role] = socket
            } else {
                unused.append(socket)
            }
        }
    }

    /// The passed socket for `role`, if any.
    package subscript(role: Role) -> PassedSocket? { assigned[role] }

    /// The passed socket bound to `path`, used or not.
    package func holder(of path: String) -> PassedSocket? {
        all.first { $0.path == path }
    }

    /// The sockets passed to this process, from `$LISTEN_PID`, `$LISTEN_FDS` and `$LISTEN_FDNAMES` (descriptors
    /// from 3). The variables are removed, so that a child process never takes the sockets for its own, and
    /// every passed descriptor is made close-on-exec.
    package static func take(environment: [String: String] = ProcessInfo.processInfo.environment) -> PassedSockets {
        guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
            let count = environment["LISTEN_FDS"].flatMap(Int32.init), count > 0
        else { return PassedSockets([]) }
        let names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(variable) }
        return PassedSockets(
            (0..<count).map { index in
                let fd = firstDescriptor + index
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                return PassedSocket(fd: fd, name: Int(index) < names.count ? names[Int(index)] : "", path: SocketKind.boundPath(of: fd))
            })
    }

    package static let firstDescriptor: Int32 = 3
}

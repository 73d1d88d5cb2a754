import Core
import FoundationEssentials
import Glibc

/// Speaks systemd's notification protocol (`sd_notify(3)`) without libsystemd: one datagram per message
/// to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`).
///
/// Without `$NOTIFY_SOCKET` (not run by systemd) every call does nothing.
public struct SystemdNotifier: Sendable {
    private let address: UnixSocketAddress?
    /// `$WATCHDOG_USEC` when it is meant for this process (`$WATCHDOG_PID` unset or ours).
    public let watchdogInterval: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        address = environment["NOTIFY_SOCKET"].flatMap { UnixSocketAddress($0, abstractNamespace: true) }
        let pid = environment["WATCHDOG_PID"].flatMap { Int32($0) }
        if let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0, pid == nil || pid == getpid() {
            watchdogInterval = .microseconds(Int64(usec))
        } else {
            watchdogInterval = nil
        }
    }

    public var isEnabled: Bool { address != nil }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments). Returns whether it was sent.
    ///
    /// Never blocks: the socket is non-blocking, and a message the receiver's full queue cannot take (a
    /// stalled manager, a proxy that stopped reading) is not sent, as `sd_notify` is best effort. A blocking
    /// send once held the daemon's stop (`STOPPING=1`) for ever.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard let address else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let payload = Array(state.utf8)
        let sent = address.withSockAddr { target, length in
            payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), target, length) }
        }
        return sent == payload.count
    }

    /// `MONOTONIC_USEC=` for `RELOADING=1`: CLOCK_MONOTONIC in microseconds.
    public static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }
}

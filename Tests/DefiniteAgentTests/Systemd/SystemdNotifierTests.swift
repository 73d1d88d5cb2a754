import Foundation
import Glibc
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// `sd_notify(3)` without libsystemd: what arrives on a datagram socket standing in for systemd's.
@Suite("Systemd notifier")
struct SystemdNotifierTests {
    /// A bound Unix datagram socket, as systemd listens on `$NOTIFY_SOCKET`.
    struct NotifySocket: ~Copyable {
        let fd: Int32
        /// What to put in `NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
        let address: String

        init(path: String) throws {
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(fd >= 0)
            let bound = SocketPath.withAddress(of: path) { bind(fd, $0, $1) }
            if bound != 0 { close(fd) }
            try #require(bound == 0, "cannot bind \(path): errno \(errno)")
            self.fd = fd
            address = path
        }

        /// A socket in the abstract namespace (no file): `NOTIFY_SOCKET=@name`.
        init(abstract name: String) throws {
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(fd >= 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = [0] + Array(name.utf8)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
            let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
            if bound != 0 { close(fd) }
            try #require(bound == 0, "cannot bind @\(name): errno \(errno)")
            self.fd = fd
            self.address = "@" + name
        }

        deinit { close(fd) }

        /// The datagrams waiting, each whole (sending is synchronous on a Unix datagram socket: what a send
        /// returned for is queued here already).
        func received() -> [String] {
            var datagrams: [String] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard n >= 0 else { return datagrams }
                datagrams.append(String(decoding: buffer[..<n], as: UTF8.self))
            }
        }
    }

    @Test func eachNotificationIsOneDatagramOnThePathInNotifySocket() throws {
        let socket = try NotifySocket(path: try makeTemporaryDirectory("notify") + "/notify.sock")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.address])
        #expect(notifier.isEnabled)

        #expect(notifier.notify("READY=1\nSTATUS=listening on /run/definite-agent/agent.sock"))
        #expect(notifier.notify("WATCHDOG=1"))
        #expect(notifier.notify("STATUS=é ünïcode"))
        #expect(socket.received() == ["READY=1\nSTATUS=listening on /run/definite-agent/agent.sock", "WATCHDOG=1", "STATUS=é ünïcode"])
    }

    @Test func anAtSignNamesASocketInTheAbstractNamespace() throws {
        let socket = try NotifySocket(abstract: "definite-agent-test-\(UUID().uuidString)")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.address])
        #expect(notifier.notify("STOPPING=1"))
        #expect(socket.received() == ["STOPPING=1"])
    }

    @Test func aNotificationThatCannotBeDeliveredReportsFailure() throws {
        let directory = try makeTemporaryDirectory("notify")
        let nobody = SystemdNotifier(environment: ["NOTIFY_SOCKET": directory + "/absent.sock"])
        #expect(nobody.isEnabled)
        #expect(!nobody.notify("READY=1"))

        // A datagram larger than the socket takes whole.
        let socket = try NotifySocket(path: directory + "/notify.sock")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.address])
        #expect(!notifier.notify("STATUS=" + String(repeating: "x", count: 1 << 20)))
        #expect(socket.received().isEmpty)
    }

    /// A receiver that stopped reading (a stalled manager, a notify proxy; outside systemd the queue holds
    /// 10 datagrams): a send once blocked, and `STOPPING=1` held the daemon's stop for ever. It is not sent.
    @Test func aReceiverThatDoesNotReadNeverBlocksASend() async throws {
        let socket = try NotifySocket(path: try makeTemporaryDirectory("notify") + "/notify.sock")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.address])
        let sent = await Task.detached {
            var sent = 0
            for _ in 0..<10_000 where notifier.notify("WATCHDOG=1") { sent += 1 }
            return sent
        }.value
        #expect(sent > 0 && sent < 10_000, "the queue filled, and the sends after it returned")
        #expect(!notifier.notify("STOPPING=1"))
    }

    @Test(arguments: [
        [:],
        ["NOTIFY_SOCKET": ""],
        // sun_path holds 108 bytes: a path of 108 or more cannot be addressed.
        ["NOTIFY_SOCKET": "/" + String(repeating: "n", count: 107)],
    ])
    func withoutAUsableNotifySocketNothingIsSent(environment: [String: String]) {
        let notifier = SystemdNotifier(environment: environment)
        #expect(!notifier.isEnabled)
        #expect(!notifier.notify("READY=1"))
    }

    @Test func aPathOf107BytesIsTheLongestUsed() throws {
        let directory = try makeTemporaryDirectory("n")
        let path = directory + "/" + String(repeating: "s", count: 107 - directory.utf8.count - 1)
        #expect(path.utf8.count == 107)
        let socket = try NotifySocket(path: path)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": path])
        #expect(notifier.notify("READY=1"))
        #expect(socket.received() == ["READY=1"])
    }

    // MARK: The watchdog

    @Test(
        arguments: [
            (["WATCHDOG_USEC": "2000000"], Duration.seconds(2)),
            (["WATCHDOG_USEC": "1500", "WATCHDOG_PID": "\(getpid())"], Duration.microseconds(1500)),
            (["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "\(getpid() + 1)"], nil),  // meant for another process
            (["WATCHDOG_USEC": "0"], nil),
            (["WATCHDOG_USEC": "-5"], nil),
            (["WATCHDOG_USEC": "2s"], nil),
            (["WATCHDOG_USEC": ""], nil),
            ([:], nil),
            (["WATCHDOG_PID": "\(getpid())"], nil),
        ] as [([String: String], Duration?)])
    func theWatchdogIntervalIsTakenOnlyWhenItIsMeantForThisProcess(environment: [String: String], interval: Duration?) {
        #expect(SystemdNotifier(environment: environment).watchdogInterval == interval)
    }

    @Test func monotonicMicrosecondsFollowTheMonotonicClock() {
        let first = SystemdNotifier.monotonicMicroseconds()
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let second = SystemdNotifier.monotonicMicroseconds()
        let reference = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        #expect(first <= reference && reference <= second)
        #expect(second - first < 1_000_000)
    }
}

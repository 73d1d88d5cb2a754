import Glibc
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Sockets passed by systemd")
struct PassedSocketsTests {
    func socket(_ fd: Int32, _ name: String, _ path: String? = nil) -> PassedSocket {
        PassedSocket(fd: fd, name: name, path: path)
    }

    @Test(arguments: ["", "unknown", "definite-agent.socket", "intake", "anything"])
    func aSinglePassedSocketIsTheIntakeSocketWhateverItsName(name: String) {
        let passed = PassedSockets([socket(3, name, "/run/a.sock")])
        #expect(passed[.intake] == socket(3, name, "/run/a.sock"))
        #expect(passed[.http] == nil && passed[.datagram] == nil)
        #expect(passed.unused.isEmpty)
    }

    /// A lone socket named for another listener is that listener's: a socket unit with only
    /// `ListenDatagram=` and `FileDescriptorName=datagram` made the daemon refuse to start, taking it for a
    /// stream socket to serve the line protocol on.
    @Test(arguments: [("http", PassedSockets.Role.http), ("datagram", .datagram)])
    func aSinglePassedSocketNamedForAnotherListenerIsThatListeners(name: String, role: PassedSockets.Role) {
        let passed = PassedSockets([socket(3, name, "/run/a.sock")])
        #expect(passed[role] == socket(3, name, "/run/a.sock"))
        #expect(passed[.intake] == nil && passed.unused.isEmpty)
    }

    @Test func withSeveralNamesDecideAndOtherNamesAreUnused() {
        let passed = PassedSockets([socket(3, "http"), socket(4, "foo"), socket(5, "intake"), socket(6, ""), socket(7, "datagram")])
        #expect(passed[.intake]?.fd == 5)
        #expect(passed[.http]?.fd == 3)
        #expect(passed[.datagram]?.fd == 7)
        #expect(passed.unused.map(\.fd) == [4, 6])
    }

    @Test func aNameGivenTwiceIsTakenOnceAndTheOtherIsUnused() {
        let passed = PassedSockets([socket(3, "intake"), socket(4, "intake")])
        #expect(passed[.intake]?.fd == 3)
        #expect(passed.unused.map(\.fd) == [4])
    }

    @Test func severalUnnamedSocketsAreAllUnused() {
        let passed = PassedSockets([socket(3, "definite-agent.socket"), socket(4, "definite-agent.socket")])
        #expect(passed[.intake] == nil)
        #expect(passed.unused.count == 2)
    }

    @Test func theHolderOfAPathIsFoundUsedOrNot() {
        let passed = PassedSockets([socket(3, "intake", "/run/a.sock"), socket(4, "other", "/run/b.sock")])
        #expect(passed.holder(of: "/run/b.sock")?.fd == 4)
        #expect(passed.holder(of: "/run/a.sock")?.fd == 3)
        #expect(passed.holder(of: "/run/c.sock") == nil)
    }

    @Test func nothingIsPassedWithoutListenPIDOfThisProcess() {
        #expect(PassedSockets.take(environment: ["LISTEN_FDS": "1", "LISTEN_PID": "1"]) == PassedSockets([]))
        #expect(PassedSockets.take(environment: [:]) == PassedSockets([]))
    }

    // MARK: Reading the environment

    // `take` with this process's pid looks at descriptors from 3, which in the test process are whatever
    // other tests opened: only their numbers and names are checked (it sets close-on-exec on them, which
    // the test process does not mind).
    static let ourPID = "\(getpid())"

    @Test(arguments: [
        ["LISTEN_PID": "\(getpid() + 1)", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "intake:http"],  // another process's sockets
        ["LISTEN_PID": "self", "LISTEN_FDS": "1"],
        ["LISTEN_PID": "", "LISTEN_FDS": "1"],
        ["LISTEN_FDS": "1"],
        ["LISTEN_PID": "\(getpid())"],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "0"],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "-1"],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "two"],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": ""],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "1 "],
        ["LISTEN_PID": "\(getpid())", "LISTEN_FDS": "99999999999"],
    ])
    func noSocketsAreTakenFromAMalformedOrForeignEnvironment(environment: [String: String]) {
        let passed = PassedSockets.take(environment: environment)
        #expect(passed.all.isEmpty)
        #expect(passed.assigned.isEmpty)
    }

    @Test func namesAreMatchedToDescriptorsInOrderFromThree() {
        let passed = PassedSockets.take(environment: [
            "LISTEN_PID": Self.ourPID, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http:datagram:intake",
        ])
        #expect(passed.all.map(\.fd) == [3, 4, 5])
        #expect(passed.all.map(\.name) == ["http", "datagram", "intake"])
        #expect(passed[.http]?.fd == 3)
        #expect(passed[.datagram]?.fd == 4)
        #expect(passed[.intake]?.fd == 5)
        #expect(passed.unused.isEmpty)
    }

    @Test func fewerNamesThanDescriptorsLeaveTheRestUnnamedAndUnused() {
        let passed = PassedSockets.take(environment: ["LISTEN_PID": Self.ourPID, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"])
        #expect(passed.all.map(\.name) == ["http", ""])
        #expect(passed[.http]?.fd == 3)
        #expect(passed[.intake] == nil)
        #expect(passed.unused.map(\.fd) == [4])
    }

    @Test func moreNamesThanDescriptorsAreIgnored() {
        let passed = PassedSockets.take(environment: [
            "LISTEN_PID": Self.ourPID, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http:intake:datagram",
        ])
        #expect(passed.all.map(\.fd) == [3])
        #expect(passed.all.map(\.name) == ["http"])
        // One socket, named for the local Stream API: its listener's.
        #expect(passed[.http]?.fd == 3)
        #expect(passed[.intake] == nil)
    }

    @Test func emptyNamesKeepTheirPlace() {
        let passed = PassedSockets.take(environment: ["LISTEN_PID": Self.ourPID, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "::intake"])
        #expect(passed.all.map(\.name) == ["", "", "intake"])
        #expect(passed[.intake]?.fd == 5)
        #expect(passed.unused.map(\.fd) == [3, 4])
    }

    @Test func severalSocketsWithoutNamesAreAllUnused() {
        let passed = PassedSockets.take(environment: ["LISTEN_PID": Self.ourPID, "LISTEN_FDS": "2"])
        #expect(passed.all.map(\.fd) == [3, 4])
        #expect(passed.all.map(\.name) == ["", ""])
        #expect(passed.assigned.isEmpty)
        #expect(passed.unused.count == 2)
    }

    @Test func aSingleUnnamedSocketIsTheIntakeSocket() {
        let passed = PassedSockets.take(environment: ["LISTEN_PID": Self.ourPID, "LISTEN_FDS": "1"])
        #expect(passed[.intake]?.fd == 3)
        #expect(passed[.intake]?.name == "")
    }

    @Test func aPassedUnixSocketIsKnownByItsPath() throws {
        // The path of a passed socket is read back from the descriptor itself: a bound Unix socket gives its
        // path; an unbound socket, or a descriptor that is no socket, none.
        let path = try makeTemporaryDirectory("passed") + "/held.sock"
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        #expect(SocketPath.withAddress(of: path) { bind(fd, $0, $1) } == 0)
        #expect(SocketKind.boundPath(of: fd) == path)
        let unbound = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unbound) }
        #expect(SocketKind.boundPath(of: unbound) == nil)
        var pipeEnds: [Int32] = [-1, -1]
        #expect(pipe(&pipeEnds) == 0)
        defer {
            close(pipeEnds[0])
            close(pipeEnds[1])
        }
        #expect(SocketKind.boundPath(of: pipeEnds[0]) == nil)
    }
}

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

    @Test(arguments: ["", "unknown", "definite-agent.socket", "intake", "http", "anything"])
    func aSinglePassedSocketIsTheIntakeSocketWhateverItsName(name: String) {
        let passed = PassedSockets([socket(3, name, "/run/a.sock")])
        #expect(passed[.intake] == socket(3, name, "/run/a.sock"))
        #expect(passed[.http] == nil && passed[.datagram] == nil)
        #expect(passed.unused.isEmpty)
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
}

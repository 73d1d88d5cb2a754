import Foundation
import Glibc
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The datagram thread on a socket pair and a real spool: it counts, writes its counts down while it
/// runs, stops at once, and its stop pipe goes with it.
@Suite("Datagram receiver")
struct DatagramReceiverTests {
    /// What this process's descriptors are open on (`pipe:[inode]`, `socket:[inode]`, paths): other tests
    /// run meanwhile, so a descriptor is told by what it is, not by its number.
    static func openFiles() throws -> Set<String> {
        let directory = "/proc/self/fd"
        return Set(
            try FileManager.default.contentsOfDirectory(atPath: directory).compactMap {
                try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0)
            })
    }

    static func pipeName(_ fd: Int32) -> String {
        var info = stat()
        #expect(fstat(fd, &info) == 0)
        return "pipe:[\(info.st_ino)]"
    }

    @Test func countsAreWrittenWhileItRunsItStopsAtOnceAndLeavesNoDescriptorOpen() async throws {
        let spool = try TestSpool("datagram-tests")
        defer { spool.shutDown() }
        let (path, writer) = (spool.path, spool.writer)
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"

        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        var receiver: DatagramReceiver? = DatagramReceiver(
            fd: pair[0], settings: LiveConfiguration(config), writer: writer,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        let ended = receiver!.ended
        let stopPipe = [Self.pipeName(receiver!.stopPipe.read), Self.pipeName(receiver!.stopPipe.write)]
        #expect(try Self.openFiles().isSuperset(of: stopPipe))
        receiver!.start()

        for datagram in [#"{"data": {"i": 1}}"#, #"{"data": {"i": 2}}"#, #"{"broken": "#] {
            #expect(Array(datagram.utf8).withUnsafeBytes { send(pair[1], $0.baseAddress, $0.count, 0) } == datagram.utf8.count)
        }
        // Written within a second of the last datagram, with the daemon running on.
        let deadline = ContinuousClock.now + .seconds(5)
        while try SpoolStatus.read(path: path).datagrams != (3, 1, 0) {
            try #require(ContinuousClock.now < deadline, "the counts never reached the spool")
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(try SpoolStatus.read(path: path).pending == 2)

        // Asleep in poll with nothing to do: its counts are written, so the poll has no timeout and only the
        // stop can wake it. (How soon the test hears of the end is up to the task scheduler: among the
        // other suites in CI that took up to 1.07 s, so a bound of 500 ms failed about one run in ten.)
        try await Task.sleep(for: .milliseconds(100))
        #expect(!receiver!.counters.hasPending, "a poll with a timeout would end without the stop")
        receiver!.stop()
        #expect(await ended.wait(until: .now + .seconds(2)))
        receiver!.stop()  // a second stop does no harm
        let persisted = CompletionSignal()
        receiver!.writeDownCounters { persisted.signal() }
        #expect(await persisted.wait(until: .now + .seconds(2)))
        receiver = nil
        // Its stop pipe goes with it, once the thread has let go of it too (the socket is the caller's).
        let released = ContinuousClock.now + .seconds(2)
        while try !Self.openFiles().isDisjoint(with: stopPipe) {
            try #require(ContinuousClock.now < released, "the stop pipe is still open")
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(fcntl(pair[0], F_GETFD) >= 0)
        close(pair[0])
    }

    /// A reload that sets `[intake] default_table` and a `[[table]]` merge key applies to the next burst:
    /// the datagram thread kept the parser it started with, so plain datagrams stayed refused and rows for
    /// the merge table were queued as appends.
    @Test func aReloadAppliesToTheNextBurst() async throws {
        let spool = try TestSpool("datagram-tests")
        defer { spool.shutDown() }
        let (path, writer) = (spool.path, spool.writer)
        let settings = LiveConfiguration(AgentConfiguration())

        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        let receiver = DatagramReceiver(
            fd: pair[0], settings: settings, writer: writer, eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test"))
        receiver.start()
        defer {
            receiver.stop()
            close(pair[0])
        }
        func send(_ datagram: String) {
            #expect(Array(datagram.utf8).withUnsafeBytes { Glibc.send(pair[1], $0.baseAddress, $0.count, 0) } == datagram.utf8.count)
        }
        func counted(_ expected: (Int, Int, Int)) async throws {
            let deadline = ContinuousClock.now + .seconds(5)
            while try SpoolStatus.read(path: path).datagrams != expected {
                try #require(ContinuousClock.now < deadline, "the counts never reached \(expected)")
                try await Task.sleep(for: .milliseconds(20))
            }
        }

        send(#"{"k": 1}"#)  // no default table yet: refused
        try await counted((1, 1, 0))
        var reloaded = AgentConfiguration()
        reloaded.intake.defaultTable = "bronze.new"
        reloaded.tables = [.init(name: "bronze.m", mode: .merge, primaryKey: "id")]
        _ = settings.reload(reloaded)
        send(#"{"k": 2}"#)
        send(#"{"config": {"table": "bronze.m"}, "data": {"id": 7}}"#)
        try await counted((3, 1, 0))
        let targets = try SpoolStatus.read(path: path).targets.map { "\($0.table) \($0.mode) \($0.primaryKey) \($0.pending)" }.sorted()
        #expect(targets == ["bronze.m merge id 1", "bronze.new append  1"])
    }
}

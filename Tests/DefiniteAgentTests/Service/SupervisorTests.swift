import Logging
import ServiceLifecycle
import Synchronization
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The life cycle's wiring, in-process: real service groups made by ``Supervisor/makeServiceGroup(_:overrun:cancellationLimit:)``
/// running parts that record what happens to them.
@Suite("Supervisor")
struct SupervisorTests {
    /// What happened, in order: "start p1", "stop p1", ….
    final class Events: Sendable {
        private let events = Mutex<[String]>([])
        func append(_ event: String) { events.withLock { $0.append(event) } }
        var all: [String] { events.withLock { $0 } }
    }

    /// A part that records its start and stop. Its start may fail, or wait for `gate`; stopping, it waits
    /// for `holdUntilDeadline` the drain deadline (like delivery with a request in flight).
    struct RecordingPart: DaemonPart, RunningPart {
        let name: String
        let events: Events
        var failure: StartupError?
        var gate: CompletionSignal?
        var holdUntilDeadline = false

        func start() async throws -> any RunningPart {
            events.append("start \(name)")
            if let gate { _ = await gate.wait() }
            if let failure { throw failure }
            return self
        }

        func run(drainDeadline: DrainDeadline) async throws {
            try? await gracefulShutdown()
            if holdUntilDeadline { _ = await CompletionSignal().wait(until: drainDeadline.instant) }
            events.append(Task.isCancelled ? "stop \(name) at once" : "stop \(name)")
        }
    }

    let events = Events()
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func supervisor(_ count: Int, drain: Duration = .seconds(10)) -> Supervisor {
        Supervisor(parts: (0..<count).map { .lineSocket("p\($0)") }, drainTimeout: drain, logger: logger)
    }

    func parts(_ count: Int, configure: (Int, inout RecordingPart) -> Void = { _, _ in }) -> [any DaemonPart] {
        (0..<count).map { index in
            var part = RecordingPart(name: "p\(index)", events: events)
            configure(index, &part)
            return part
        }
    }

    /// Waits (a bounded while) until `events` holds `event`.
    func waitFor(_ event: String) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !events.all.contains(event) {
            try #require(ContinuousClock.now < deadline, "no \"\(event)\" in \(events.all)")
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test func partsStartInOrderAndASignalStopsThemInReverseWithACleanExit() async throws {
        let supervisor = supervisor(3)
        let group = supervisor.makeServiceGroup(parts(3))
        async let run: Void = group.run()
        try await waitFor("start p2")
        let action = supervisor.shutdownSignalled("SIGTERM")
        #expect(action == .stopGracefully(deadline: supervisor.drainDeadline.instant))
        await group.triggerGracefulShutdown()
        try await run
        #expect(events.all == ["start p0", "start p1", "start p2", "stop p2", "stop p1", "stop p0"])
        #expect(supervisor.exitError == nil)
    }

    @Test(arguments: 0..<4)
    func aFailedStartStopsThePartsAlreadyStartedInReverseAndTheGroupEndsWithItsError(failing: Int) async throws {
        let supervisor = supervisor(4)
        let failure = StartupError(.pathInUse, part: "p\(failing)", "another process is listening on it")
        let group = supervisor.makeServiceGroup(
            parts(4) { index, part in
                if index == failing { part.failure = failure }
            })
        let thrown = await #expect(throws: StartupError.self) { try await group.run() }
        #expect(thrown?.code == .pathInUse && thrown?.part == "p\(failing)")
        let started = (0...failing).map { "start p\($0)" }
        let stopped = (0..<failing).reversed().map { "stop p\($0)" }
        #expect(events.all == started + stopped, "parts after the failing one never start")
        #expect((supervisor.exitError as? StartupError)?.part == "p\(failing)")
    }

    @Test func aFailedStartDoesNotWaitTheFullDrainBound() async throws {
        let supervisor = supervisor(3, drain: .seconds(60))
        let group = supervisor.makeServiceGroup(
            parts(3) { index, part in
                if index == 0 { part.holdUntilDeadline = true }
                if index == 2 { part.failure = StartupError(.addressUnusable, part: "p2", "port 1 is in use") }
            })
        let start = ContinuousClock.now
        await #expect(throws: StartupError.self) { try await group.run() }
        // The failed start's drain is 1 s; the bound only has to tell it from the 60 s one. It took 1 s
        // alone, 3.7 s among the other suites in CI, 5.3 s on a loaded machine.
        #expect(ContinuousClock.now - start < .seconds(30))
    }

    @Test func aSignalDuringStartUpLetsThePartStartingFinishAndNoOtherStart() async throws {
        let supervisor = supervisor(4)
        let gate = CompletionSignal()
        let group = supervisor.makeServiceGroup(
            parts(4) { index, part in
                if index == 1 { part.gate = gate }
            })
        async let run: Void = group.run()
        try await waitFor("start p1")
        _ = supervisor.shutdownSignalled("SIGTERM")
        await group.triggerGracefulShutdown()
        gate.signal()
        try await run
        #expect(events.all == ["start p0", "start p1", "stop p1", "stop p0"])
        #expect(supervisor.exitError == nil)
    }

    @Test func aSignalBeforeTheGroupRunsStartsNothing() async throws {
        let supervisor = supervisor(3)
        let group = supervisor.makeServiceGroup(parts(3))
        _ = supervisor.shutdownSignalled("SIGTERM")
        await group.triggerGracefulShutdown()
        try await group.run()
        #expect(events.all == [])
    }

    @Test func aSecondSignalStopsAtOnceWithoutWaitingForTheDrain() async throws {
        let supervisor = supervisor(2, drain: .seconds(60))
        let group = supervisor.makeServiceGroup(parts(2) { _, part in part.holdUntilDeadline = true })
        let run = Task { try await group.run() }
        try await waitFor("start p1")
        _ = supervisor.shutdownSignalled("SIGTERM")
        await group.triggerGracefulShutdown()
        try await Task.sleep(for: .milliseconds(50))
        #expect(supervisor.shutdownSignalled("SIGTERM") == .stopAtOnce)
        let start = ContinuousClock.now
        run.cancel()
        _ = await run.result
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(events.all.contains("stop p1 at once") && events.all.contains("stop p0 at once"))
        #expect(supervisor.exitError == nil)
    }

    @Test func aPartThatEndsOnItsOwnStopsTheGroupWithAnError() async throws {
        struct EndingPart: DaemonPart, RunningPart {
            func start() async throws -> any RunningPart { self }
            func run(drainDeadline: DrainDeadline) async throws {}
        }
        let supervisor = supervisor(3)
        var implementations = parts(3)
        implementations[2] = EndingPart()
        let group = supervisor.makeServiceGroup(implementations)
        await #expect(throws: PartStoppedError.self) { try await group.run() }
        #expect(events.all == ["start p0", "start p1", "stop p1", "stop p0"])
        #expect(supervisor.exitError is PartStoppedError)
    }
}

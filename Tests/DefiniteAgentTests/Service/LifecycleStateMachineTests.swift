import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Life cycle decisions")
struct LifecycleStateMachineTests {
    typealias Machine = LifecycleStateMachine
    let t0 = ContinuousClock.now
    let drain = Duration.seconds(10)

    func machine(parts: Int = 4) -> Machine {
        Machine(partCount: parts, drainTimeout: drain, failedStartDrain: .seconds(1))
    }

    /// A machine whose parts `0..<count` have started.
    func started(_ count: Int, of parts: Int = 4) -> Machine {
        var machine = machine(parts: parts)
        for part in 0..<count { _ = machine.started(part) }
        return machine
    }

    // MARK: Start order

    @Test(arguments: 1...5)
    func partsStartOneAtATimeInOrderAndTheLastMakesTheDaemonReady(parts: Int) {
        var machine = machine(parts: parts)
        for part in 0..<parts {
            #expect(machine.turn(of: part) == .start)
            for later in (part + 1)..<parts { #expect(machine.turn(of: later) == .wait) }
            let action = machine.started(part)
            #expect(action == (part + 1 == parts ? .ready : .startNext(part + 1)))
        }
        #expect(machine.phase == .running)
        #expect(machine.exit == .notStopping)
        #expect(machine.drainDeadline(now: t0) == nil)
    }

    // MARK: A failed start

    @Test(arguments: 0..<4)
    func aFailedStartStopsTheStartedPartsSoonAndNothingElseStarts(failing: Int) {
        var machine = started(failing)
        let action = machine.failedToStart(failing, at: t0)
        #expect(action == .stopStartedParts(deadline: t0 + .seconds(1)))
        #expect(machine.phase == .stopping(.failedToStart(part: failing), deadline: t0 + .seconds(1)))
        for later in (failing + 1)..<4 { #expect(machine.turn(of: later) == .never) }
        #expect(machine.exit == .failure(part: failing))
        #expect(machine.drainDeadline(now: t0 + .milliseconds(10)) == t0 + .seconds(1))
    }

    @Test func aFailedStartDrainsNoLongerThanTheDrainBoundWhenThatIsShorter() {
        var machine = Machine(partCount: 3, drainTimeout: .milliseconds(200), failedStartDrain: .seconds(1))
        #expect(machine.failedToStart(0, at: t0) == .stopStartedParts(deadline: t0 + .milliseconds(200)))
    }

    @Test func aSecondFailureChangesNothing() {
        var machine = started(1)
        _ = machine.failedToStart(1, at: t0)
        #expect(machine.failed(0, at: t0 + .seconds(5)) == .none)
        #expect(machine.failedToStart(2, at: t0) == .none)
        #expect(machine.exit == .failure(part: 1))
        #expect(machine.drainDeadline(now: t0) == t0 + .seconds(1))
    }

    // MARK: A failure after the start

    @Test func aFailureWhileRunningStopsEveryPartWithTheFullDrainBound() {
        var machine = started(4)
        #expect(machine.failed(2, at: t0) == .stopStartedParts(deadline: t0 + drain))
        #expect(machine.exit == .failure(part: 2))
    }

    // MARK: Shutdown signals

    @Test(arguments: 0...4)
    func aSignalStopsGracefullyWithTheDrainBoundAndEndsCleanly(startedParts: Int) {
        var machine = started(startedParts)
        #expect(machine.shutdownSignalled(at: t0) == .stopGracefully(deadline: t0 + drain))
        #expect(machine.phase == .stopping(.requested, deadline: t0 + drain))
        for part in startedParts..<4 { #expect(machine.turn(of: part) == .never) }
        #expect(machine.exit == .clean)
    }

    @Test func aPartAlreadyStartingWhenTheSignalCameFinishesWithoutWakingTheNext() {
        var machine = started(1)
        _ = machine.shutdownSignalled(at: t0)
        #expect(machine.started(1) == .none)
        #expect(machine.turn(of: 2) == .never)
    }

    @Test func aSecondSignalStopsAtOnceAndAThirdChangesNothing() {
        var machine = started(4)
        _ = machine.shutdownSignalled(at: t0)
        #expect(machine.shutdownSignalled(at: t0 + .seconds(1)) == .stopAtOnce)
        #expect(machine.phase == .stoppingAtOnce(.requested))
        #expect(machine.drainDeadline(now: t0 + .seconds(1)) == t0 + .seconds(1))
        #expect(machine.shutdownSignalled(at: t0 + .seconds(2)) == .none)
        #expect(machine.exit == .clean)
    }

    @Test func aSignalWhileAFailedStartUnwindsStopsAtOnceAndKeepsTheFailure() {
        var machine = started(2)
        _ = machine.failedToStart(2, at: t0)
        #expect(machine.shutdownSignalled(at: t0) == .stopAtOnce)
        #expect(machine.phase == .stoppingAtOnce(.failedToStart(part: 2)))
        #expect(machine.exit == .failure(part: 2))
    }

    // MARK: Failures during a stop

    @Test func aStartFailureAfterTheSignalStillDecidesTheExitAndHastensTheStop() {
        var machine = started(2)
        _ = machine.shutdownSignalled(at: t0)
        #expect(machine.failedToStart(2, at: t0 + .seconds(1)) == .hastenStop(deadline: t0 + .seconds(2)))
        #expect(machine.phase == .stopping(.failedToStart(part: 2), deadline: t0 + .seconds(2)))
        #expect(machine.exit == .failure(part: 2))
    }

    @Test func aFailureNeverPushesTheDeadlineLater() {
        var machine = Machine(partCount: 3, drainTimeout: .seconds(10), failedStartDrain: .seconds(1))
        _ = machine.shutdownSignalled(at: t0)
        #expect(machine.failed(0, at: t0 + .seconds(9)) == .hastenStop(deadline: t0 + .seconds(10)))
    }

    @Test func aFailureWhileStoppingAtOnceDecidesTheExit() {
        var machine = started(4)
        _ = machine.shutdownSignalled(at: t0)
        _ = machine.shutdownSignalled(at: t0)
        #expect(machine.failed(3, at: t0) == .none)
        #expect(machine.phase == .stoppingAtOnce(.failed(part: 3)))
        #expect(machine.exit == .failure(part: 3))
    }
}

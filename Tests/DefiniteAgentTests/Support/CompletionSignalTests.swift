import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Completion signal")
struct CompletionSignalTests {
    @Test func aWaiterResumesWhenItHappens() async {
        let signal = CompletionSignal()
        async let happened = signal.wait(until: .now + .seconds(30))
        signal.signal()
        #expect(await happened)
        #expect(await signal.wait(), "later waits return at once")
    }

    @Test func aCountdownHappensAtTheLastSignal() async {
        let signal = CompletionSignal(count: 3)
        signal.signal()
        signal.signal()
        #expect(!signal.hasHappened)
        signal.signal()
        signal.signal()  // one too many changes nothing
        #expect(signal.hasHappened)
    }

    @Test func aWaitGivesUpAtItsDeadline() async {
        let signal = CompletionSignal()
        let start = ContinuousClock.now
        #expect(await !signal.wait(until: start + .milliseconds(50)))
        #expect(ContinuousClock.now - start >= .milliseconds(50))
    }

    @Test func aCancelledWaitReturnsAtOnce() async {
        let signal = CompletionSignal()
        let waiter = Task { await signal.wait(until: .now + .seconds(60)) }
        let unbounded = Task { await signal.wait() }
        waiter.cancel()
        unbounded.cancel()
        #expect(await !waiter.value)
        #expect(await !unbounded.value)
    }
}

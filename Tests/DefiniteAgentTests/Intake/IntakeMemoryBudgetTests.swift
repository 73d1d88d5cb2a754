import NIOConcurrencyHelpers
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Intake memory budget")
struct IntakeMemoryBudgetTests {
    @Test func readsAreAdmittedWhileBatchesInFlightHoldLessThanTheLimit() {
        let budget = IntakeMemoryBudget(limit: 1000)
        #expect(
            budget.admitOrWait {
                Issue.record("asked for a wake-up while there was room")
                return {}
            })
        budget.hold(999)
        #expect(
            budget.admitOrWait {
                Issue.record("asked for a wake-up while there was room")
                return {}
            })
        budget.release(999)
        #expect(budget.heldBytes == 0)
    }

    @Test func aConnectionWaitsWhileTheBudgetIsFullAndIsWokenOnceWhenThereIsRoom() {
        let budget = IntakeMemoryBudget(limit: 1000)
        let wakes = NIOLockedValueBox(0)
        budget.hold(600)
        budget.hold(600)
        #expect(!budget.admitOrWait { { wakes.withLockedValue { $0 += 1 } } })
        #expect(!budget.admitOrWait { { wakes.withLockedValue { $0 += 10 } } })
        budget.release(100)  // 1100 held: still full, nobody woken
        #expect(wakes.withLockedValue { $0 } == 0)
        budget.release(500)  // 600 held: room again, both waiters woken, once each
        #expect(wakes.withLockedValue { $0 } == 11)
        budget.release(600)
        #expect(wakes.withLockedValue { $0 } == 11)
        #expect(budget.heldBytes == 0)
    }
}

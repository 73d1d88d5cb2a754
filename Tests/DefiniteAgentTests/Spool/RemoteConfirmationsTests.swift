import Synchronization
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("RemoteConfirmations")
struct RemoteConfirmationsTests {
    final class Heard: Sendable {
        let outcomes = Mutex<[RemoteConfirmations.Outcome]>([])
        func record(_ outcome: RemoteConfirmations.Outcome) { outcomes.withLock { $0.append(outcome) } }
        var all: [RemoteConfirmations.Outcome] { outcomes.withLock { $0 } }
    }

    @Test func aRequestIsSettledOnceEveryRowIsCommittedOrRefusedWithTheLastSnapshot() {
        let confirmations = RemoteConfirmations()
        let heard = Heard()
        _ = confirmations.register(targetID: 1, seqs: 10..<15, settled: heard.record)
        #expect(confirmations.awaits(targetID: 1, seqs: [14, 15]))
        #expect(!confirmations.awaits(targetID: 1, seqs: [15, 16]) && !confirmations.awaits(targetID: 2, seqs: [10]))
        confirmations.settle(targetID: 1, committed: [8, 9, 10, 11], snapshotID: "s1", rejected: [])
        confirmations.settle(targetID: 2, committed: [12, 13, 14], snapshotID: "other", rejected: [])
        #expect(heard.all.isEmpty)
        confirmations.settle(targetID: 1, committed: [12, 14], snapshotID: "s2", rejected: [([13], "rejected by the API: bad")])
        #expect(heard.all == [.init(committed: 4, rejected: 1, errors: ["rejected by the API: bad"], snapshotID: "s2")])
        #expect(!confirmations.awaits(targetID: 1, seqs: [10]))
    }

    @Test func aCancelledRequestIsNeverSettled() {
        let confirmations = RemoteConfirmations()
        let heard = Heard()
        let ticket = confirmations.register(targetID: 1, seqs: 0..<2, settled: heard.record)
        confirmations.cancel(ticket)
        confirmations.settle(targetID: 1, committed: [0, 1], snapshotID: "s", rejected: [])
        #expect(heard.all.isEmpty && !confirmations.awaits(targetID: 1, seqs: [0]))
    }
}

import Foundation
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

    /// Rows dead-lettered together for `reason`; `writtenUnnamed` of them written by the API (partial).
    static func deadLetter(_ seqs: [Int64], _ reason: String, writtenUnnamed: Int = 0) -> DeliveryLedger.DeadLetter {
        DeliveryLedger.DeadLetter(
            seqs: seqs,
            failure: DeliveryLedger.Failure(
                reason: reason, errors: [], warnings: [], attempts: 1, partial: writtenUnnamed > 0, firstFailedAt: Date()),
            writtenUnnamed: writtenUnnamed)
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
        confirmations.settle(
            targetID: 1, committed: [12, 14], snapshotID: "s2",
            rejected: [Self.deadLetter([13], "rejected by the API: bad")])
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

    /// An append request answered 200 with rejected rows it did not name: the rows become one dead letter
    /// marked partial. A waiting request was answered `successful_rows: 0, rejected_rows: 3` where the API had
    /// written 2 of 3: a client trusting it would have sent the 2 again.
    @Test func aPartialDeadLetterCountsAsTheAPICountedWhenTheRequestWaitedForAllOfIt() {
        let confirmations = RemoteConfirmations()
        let heard = Heard()
        _ = confirmations.register(targetID: 1, seqs: 0..<3, settled: heard.record)
        _ = confirmations.register(targetID: 1, seqs: 3..<5, settled: heard.record)
        let partial = Self.deadLetter([0, 1, 2], "partially rejected: 1 of 3", writtenUnnamed: 2)
        confirmations.settle(targetID: 1, committed: [], snapshotID: "s3", rejected: [partial])
        #expect(heard.all == [.init(committed: 2, rejected: 1, errors: ["partially rejected: 1 of 3"], snapshotID: "s3")])
        // A request that waited for only some of such a request's rows cannot tell which were written.
        let straddling = Self.deadLetter([2, 3, 4, 5], "partially rejected: 2 of 4", writtenUnnamed: 2)
        confirmations.settle(targetID: 1, committed: [], snapshotID: "s4", rejected: [straddling])
        #expect(heard.all.last == .init(committed: 0, rejected: 0, unknown: 2, errors: ["partially rejected: 2 of 4"]))
    }
}

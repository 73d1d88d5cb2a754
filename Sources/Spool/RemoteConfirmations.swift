import Synchronization

/// Requests waiting for their rows to be committed by the Stream API (`config.wait = true` on the local
/// Stream API), between intake, which registers them once their rows are durable, and delivery, which
/// sends those rows with `wait: true` and settles them once their fate is recorded in the spool.
///
/// It holds nothing durable: a waiting request whose daemon stops is answered as not yet committed, and
/// its rows are delivered after the restart like any others.
package final class RemoteConfirmations: Sendable {
    /// What became of a waiting request's rows.
    package struct Outcome: Sendable, Equatable {
        /// Rows the API committed (or that a later write of their merge key superseded).
        package var committed = 0
        /// Rows dead-lettered (refused by the API, or expired), with the reasons.
        package var rejected = 0
        /// Rows that went in a request the API answered with rows rejected and the others written, without
        /// saying which, when the request waited for only some of that request's rows: neither committed
        /// nor rejected as far as anyone can tell (their dead letter is marked partial).
        package var unknown = 0
        package var errors: [String] = []
        /// The Iceberg snapshot of the last request that committed some of them.
        package var snapshotID: String?
    }

    /// A registered request; the ticket cancels it.
    package struct Ticket: Hashable, Sendable {
        fileprivate let id: Int
    }

    private struct Waiter {
        let targetID: Int64
        let seqs: Range<Int64>
        var remaining: Int
        var outcome = Outcome()
        let settled: @Sendable (Outcome) -> Void
    }

    private struct State {
        var waiters: [Int: Waiter] = [:]
        var next = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// Waits for the rows `seqs` of target `targetID`; `settled` is called once (on delivery's thread) when
    /// every one of them is committed or dead-lettered, unless the ticket is cancelled first.
    package func register(targetID: Int64, seqs: Range<Int64>, settled: @escaping @Sendable (Outcome) -> Void) -> Ticket {
        state.withLock { state in
            state.next += 1
            state.waiters[state.next] = Waiter(targetID: targetID, seqs: seqs, remaining: seqs.count, settled: settled)
            return Ticket(id: state.next)
        }
    }

    /// Stops waiting (the request was answered otherwise: its time ran out, the daemon stops).
    package func cancel(_ ticket: Ticket) {
        _ = state.withLock { $0.waiters.removeValue(forKey: ticket.id) }
    }

    /// Whether a request waits for any of these rows: then they go with `wait: true`.
    package func awaits(targetID: Int64, seqs: [Int64]) -> Bool {
        guard let first = seqs.first, let last = seqs.last else { return false }
        return state.withLock { state in
            state.waiters.values.contains { waiter in
                waiter.targetID == targetID && waiter.seqs.overlaps(first..<(last + 1))
                    && seqs.contains { waiter.seqs.contains($0) }
            }
        }
    }

    /// Rows whose fate is now recorded: `committed` (with the snapshot the API gave, if any) and
    /// `rejected` (with the reason). Settles every request whose rows are all accounted for.
    ///
    /// Rows of a partial dead letter count as the API counted them when the request waited for all of
    /// them (what it wrote as committed, the rest as rejected: a client that took all of them for refused
    /// would send the written ones again); otherwise as ``Outcome/unknown``.
    package func settle(targetID: Int64, committed: [Int64], snapshotID: String?, rejected: [DeliveryLedger.DeadLetter]) {
        let done: [(Waiter, Outcome)] = state.withLock { state in
            guard !state.waiters.isEmpty else { return [] }
            var done: [(Waiter, Outcome)] = []
            for (id, var waiter) in state.waiters where waiter.targetID == targetID {
                let hits = committed.count { waiter.seqs.contains($0) }
                if hits > 0 {
                    waiter.outcome.committed += hits
                    waiter.outcome.snapshotID = snapshotID ?? waiter.outcome.snapshotID
                }
                var settledHere = hits
                for letter in rejected {
                    let refused = letter.seqs.count { waiter.seqs.contains($0) }
                    guard refused > 0 else { continue }
                    settledHere += refused
                    if letter.writtenUnnamed == 0 {
                        waiter.outcome.rejected += refused
                    } else if refused == letter.seqs.count {
                        waiter.outcome.committed += letter.writtenUnnamed
                        waiter.outcome.rejected += refused - letter.writtenUnnamed
                        waiter.outcome.snapshotID = snapshotID ?? waiter.outcome.snapshotID
                    } else {
                        waiter.outcome.unknown += refused
                    }
                    let reason = letter.failure.reason
                    if !waiter.outcome.errors.contains(reason) { waiter.outcome.errors.append(reason) }
                }
                waiter.remaining -= settledHere
                if waiter.remaining <= 0 {
                    state.waiters[id] = nil
                    done.append((waiter, waiter.outcome))
                } else {
                    state.waiters[id] = waiter
                }
            }
            return done
        }
        for (waiter, outcome) in done { waiter.settled(outcome) }
    }
}

import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// Randomized, model-based test of delivery, in the spirit of Vector's disk-buffer model tests: random
/// schedules of rows (append and merge, some refused by the API), transient failures, drops after the
/// API committed, 413s, batch registrations the spool fails to write, rows appended by another process
/// (seen only at a poll), and restarts, run against
/// ``DeliverySimulation`` and checked against what must hold whatever happens:
/// - no acknowledged row is lost: each leaves the queue delivered, dead-lettered or superseded by a later
///   write of its merge key;
/// - no refused row is ever written or recorded as delivered, and each is dead-lettered exactly once;
/// - good rows are written; an append row twice only where a lost confirmation explains it (a drop after
///   the commit, a restart before the record);
/// - upserts reach the API in order, one merge batch in flight, append batches within the concurrency;
/// - isolating `k` refused rows among `n` costs at most `k·(2·⌈log2 n⌉ + 1) + 1` answered requests (plus
///   one per restart the batch lived through), however many transient failures come between them.
///
/// Seeded and reproducible: `DELIVERY_MODEL_SEED=N DELIVERY_MODEL_SCHEDULES=1 swift test --filter
/// DeliveryModel` replays schedule N (add `DELIVERY_MODEL_TRACE=1` to print where it ended).
@Suite("Delivery model")
struct DeliveryModelTests {
    @Test func randomSchedulesLoseNothingDeliverNoRefusedRowAndStayWithinTheIsolationBound() {
        let environment = ProcessInfo.processInfo.environment
        let schedules = environment["DELIVERY_MODEL_SCHEDULES"].flatMap { UInt64($0) } ?? 10_000
        let first = environment["DELIVERY_MODEL_SEED"].flatMap { UInt64($0) } ?? 1
        var failed = 0
        var totals = (rows: 0, requests: 0, restarts: 0)
        for seed in first..<(first + schedules) {
            let outcome = Self.run(seed: seed)
            totals.rows += outcome.rows
            totals.requests += outcome.requests
            totals.restarts += outcome.restarts
            guard outcome.problems.isEmpty else {
                Issue.record("schedule \(seed): \(outcome.problems.prefix(5).joined(separator: "; "))")
                failed += 1
                if failed >= 5 { break }
                continue
            }
        }
        // The schedules must exercise what they claim to.
        #expect(totals.rows > Int(schedules) * 20 && totals.requests > Int(schedules) * 5 && totals.restarts > Int(schedules) / 4)
    }

    struct Outcome {
        var problems: [String]
        var rows: Int
        var requests: Int
        var restarts: Int
    }

    static func run(seed: UInt64) -> Outcome {
        var random = SplitMix64(seed: seed)
        func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &random) < p }
        func pick(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &random) }

        var settings = DeliverySimulation.settings(
            maxRows: pick(1...40), linger: .milliseconds(Int64(pick(0...200))), concurrency: pick(1...3), initial: 50, max: 400)
        // Sometimes batches fill by bytes before rows (rows are 20–400 bytes below).
        if chance(0.5) { settings.maxBytes = pick(300...4000) }
        let simulation = DeliverySimulation(settings: settings, seed: seed, workers: pick(1...3))
        simulation.api.refusal = chance(0.5) ? .wholeRequest : .rows
        simulation.api.namesRows = chance(0.3)
        simulation.api.maxRows = chance(0.15) ? pick(2...20) : .max
        simulation.api.serverErrorRate = chance(0.8) ? Double(pick(0...30)) / 100 : 0
        simulation.api.rateLimitRate = chance(0.5) ? Double(pick(0...15)) / 100 : 0
        simulation.api.retryAfter = chance(0.5) ? nil : Double(pick(1...10)) / 10
        simulation.api.noAnswerRate = chance(0.5) ? Double(pick(0...10)) / 100 : 0
        simulation.api.dropAfterCommitRate = chance(0.5) ? Double(pick(0...10)) / 100 : 0
        simulation.api.slowness = chance(0.2) ? pick(1...12) : 0

        let targets = (0..<pick(1...3)).map { index in
            simulation.addTarget(
                chance(0.35)
                    ? SpoolTarget(table: "bronze.m\(index)", mode: .merge, primaryKey: "id")
                    : SpoolTarget(table: "bronze.a\(index)", mode: .append))
        }
        var remaining = pick(1...150)
        let rows = remaining
        let badShare = chance(0.8) ? Double(pick(0...10)) / 100 : 0
        let keys = pick(3...40)
        var restartsLeft = pick(0...3)
        let healAt = 4000

        for action in 0..<40_000 {
            if action == healAt { simulation.api.heal() }
            if remaining == 0, simulation.queued == 0, !simulation.isBusy { break }
            let roll = pick(0...99)
            if roll < 8, remaining > 0 {
                let count = min(remaining, pick(1...20))
                remaining -= count
                let target = targets[pick(0...(targets.count - 1))]
                // Sometimes another process appends (`dlq replay`, to a target the daemon knows): the machine
                // sees those rows only at a poll.
                let byAnotherProcess = !simulation.spool[target]!.rows.isEmpty && chance(0.1)
                simulation.append(
                    target,
                    (0..<count).map { _ in
                        DeliverySimulation.Row(key: "k\(pick(0...(keys - 1)))", bad: chance(badShare), size: pick(20...400))
                    }, announce: !byAnotherProcess)
            } else if roll < 9, restartsLeft > 0, chance(0.3) {
                restartsLeft -= 1
                simulation.restart()
            } else if roll == 9, action < healAt, chance(0.2) {
                simulation.failingRegistrations += 1
            } else if roll < 15 {
                simulation.advance(by: .milliseconds(Int64(pick(0...300))))
            } else if roll < 17 {
                simulation.observe()
            } else if !simulation.act(pick(0...(simulation.workers.count - 1))), !simulation.isBusy {
                if !simulation.advanceToNextWakeUp() { simulation.advance(by: .milliseconds(50)) }
            }
        }
        if ProcessInfo.processInfo.environment["DELIVERY_MODEL_TRACE"] != nil { simulation.dump() }
        var problems =
            remaining > 0 || simulation.queued > 0 || simulation.isBusy
            ? ["did not drain: \(remaining) rows not appended, \(simulation.queued) queued"] : []
        problems += simulation.checkDrained()
        if simulation.api.maxRows == .max {
            for cost in simulation.isolationCosts() {
                let levels = Int(ceil(log2(Double(max(2, cost.live)))))
                let bound = cost.bad * (2 * levels + 1) + 1 + cost.restarts
                if cost.answered > bound {
                    problems.append(
                        "batch \(cost.batchID): \(cost.answered) answered requests for \(cost.bad) refused rows among \(cost.live) (bound \(bound))"
                    )
                }
            }
        }
        return Outcome(problems: problems, rows: rows, requests: simulation.requests.count, restarts: simulation.restarts)
    }
}

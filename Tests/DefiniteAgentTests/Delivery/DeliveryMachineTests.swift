import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The delivery state machine, driven through ``DeliverySimulation`` (its spool and API in memory).
@Suite("DeliveryMachine")
struct DeliveryMachineTests {
    typealias Row = DeliverySimulation.Row

    static let append = SpoolTarget(table: "bronze.events", mode: .append)
    static let merge = SpoolTarget(table: "bronze.users", mode: .merge, primaryKey: "id")

    /// A simulation with one target holding `rows` rows, the ones in `bad` refused by the API.
    func simulation(
        _ target: SpoolTarget = append, rows: Int, bad: Set<Int> = [], settings: DeliveryMachine.Settings? = nil,
        workers: Int = 1, configure: (inout DeliverySimulation.API) -> Void = { _ in }
    ) -> DeliverySimulation {
        let simulation = DeliverySimulation(settings: settings ?? DeliverySimulation.settings(), seed: 7, workers: workers)
        configure(&simulation.api)
        let id = simulation.addTarget(target)
        simulation.append(id, (0..<rows).map { Row(key: target.mode == .merge ? "k\($0)" : nil, bad: bad.contains($0)) })
        return simulation
    }

    func expectDrained(_ simulation: DeliverySimulation, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(simulation.queued == 0, sourceLocation: sourceLocation)
        #expect(simulation.checkDrained() == [], sourceLocation: sourceLocation)
    }

    /// Lets worker 0 act (the clock jumping ahead when it has nothing to do) until `done` holds.
    func run(
        _ simulation: DeliverySimulation, until done: () -> Bool, limit: Int = 1000,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var actions = 0
        while !done() {
            guard actions < limit else {
                Issue.record("still not done after \(limit) actions", sourceLocation: sourceLocation)
                return
            }
            if !simulation.act(0) { simulation.advanceToNextWakeUp() }
            actions += 1
        }
    }

    /// Until the first request was answered and what it changed recorded.
    func untilFirstAnswer(_ simulation: DeliverySimulation) {
        run(simulation) { !simulation.requests.isEmpty && !simulation.isRecording(0) }
    }

    func answered(_ simulation: DeliverySimulation) -> [DeliverySimulation.Request] {
        simulation.requests.filter { [200, 400, 413, 422].contains($0.status ?? 0) }
    }

    // MARK: Every documented status, append and merge

    enum Expected: Equatable {
        /// Sent again after a wait; `state` is what the target shows meanwhile.
        case retried(TargetState.Kind)
        /// Split in halves, each delivered.
        case split
        /// Dead-lettered at once, not retried.
        case deadLettered
        case delivered
    }

    static let statuses: [(status: Int?, expected: Expected)] = [
        (200, .delivered), (400, .split), (401, .retried(.authFailing)), (403, .retried(.authFailing)),
        (404, .retried(.heldTableNotFound)), (413, .split), (422, .deadLettered), (429, .retried(.backingOff)),
        (500, .retried(.backingOff)), (502, .retried(.backingOff)), (503, .retried(.backingOff)), (504, .retried(.backingOff)),
        (408, .retried(.backingOff)), (nil, .retried(.backingOff)),
    ]

    @Test(arguments: [append, merge], statuses.indices)
    func everyStatusLeadsToWhatTheReferenceSays(target: SpoolTarget, index: Int) {
        let (status, expected) = Self.statuses[index]
        let simulation = simulation(target, rows: 4) { $0.forced = [status] }
        // First request, then look at the state before anything else happens.
        untilFirstAnswer(simulation)
        let first = simulation.spool[1]!
        switch expected {
        case .retried(let state):
            #expect(first.state.kind == state)
            #expect(first.left.isEmpty && simulation.deadLetters.isEmpty)
            #expect(first.lastError?.contains(status.map(String.init) ?? "timeout") == true)
        case .deadLettered:
            #expect(simulation.deadLetters.count == 1 && simulation.deadLetters[0].seqs == [0, 1, 2, 3])
            #expect(simulation.deadLetters[0].failure.status == 422 && !simulation.deadLetters[0].failure.partial)
            #expect(simulation.deadLetters[0].failure.reason.hasPrefix("the API refused the request as invalid"))
        case .delivered:
            #expect(first.left.count == 4 && first.batches.isEmpty)
        case .split:
            #expect(first.left.isEmpty && first.batches.count == 1)
        }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        let sent = simulation.requests.map(\.seqs)
        switch expected {
        case .retried:
            #expect(sent == [[0, 1, 2, 3], [0, 1, 2, 3]])
        case .split:
            // 400 with no bad row: the left half is probed, then the right half confirmed row by row, all
            // accepted; 413: two halves.
            #expect(sent.first == [0, 1, 2, 3] && sent.dropFirst().allSatisfy { $0.count < 4 })
            #expect(simulation.deadLetters.isEmpty)
        case .deadLettered:
            #expect(sent == [[0, 1, 2, 3]])
        case .delivered:
            #expect(sent == [[0, 1, 2, 3]] && simulation.lake[1]!.count == 4)
        }
    }

    @Test func aTransientFailureWaitsItsBackoffAndRetryAfterIsHonoured() {
        let simulation = simulation(rows: 3, settings: DeliverySimulation.settings(initial: 50, max: 500)) { $0.forced = [429, 503] }
        simulation.api.retryAfter = 2
        untilFirstAnswer(simulation)
        let started = simulation.now.instant
        #expect(!simulation.act(0), "nothing may be sent before Retry-After")
        simulation.advance(by: .milliseconds(1999))
        #expect(!simulation.act(0))
        simulation.advance(by: .milliseconds(1))
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.status) == [429, 503, 200])
        #expect(simulation.now.instant - started >= .seconds(2) + .milliseconds(50))
        #expect(simulation.spool[1]!.state.kind == .delivering)
    }

    /// A `Retry-After` of `inf`, `1e999` or years is no reason to crash or to hold the table for good:
    /// no finite value means the usual backoff, and the longest wait is an hour.
    @Test func aRetryAfterThatIsNotFiniteOrIsYearsLongWaitsTheBackoffOrAnHour() {
        for (retryAfter, wait) in [(Double.infinity, Duration.milliseconds(50)), (.nan, .milliseconds(50)), (1e300, .seconds(3600))] {
            let simulation = simulation(rows: 3, settings: DeliverySimulation.settings(initial: 50, max: 50)) { $0.forced = [429] }
            simulation.api.retryAfter = retryAfter
            untilFirstAnswer(simulation)
            simulation.advance(by: wait - .milliseconds(1))
            #expect(!simulation.act(0), "\(retryAfter): sent before its wait")
            simulation.advance(by: .milliseconds(1))
            simulation.runUntilQuiet()
            expectDrained(simulation)
            #expect(simulation.requests.map(\.status) == [429, 200], "\(retryAfter)")
        }
    }

    /// A 200 that does not say what it wrote (a proxy's page, a wrong `[api] url`) is not taken for "all
    /// written": the rows go again after a backoff, and the target's last error says why.
    @Test func aTwoHundredThatIsNotAStreamAPIAnswerIsSentAgainNotTakenForDelivered() {
        let simulation = simulation(rows: 3) { $0.notStreamAPIAnswers = 1 }
        untilFirstAnswer(simulation)
        let first = simulation.spool[1]!
        #expect(first.left.isEmpty && first.state.kind == .backingOff)
        #expect(first.lastError?.hasPrefix("HTTP 200 without rejected_rows or successful_rows") == true)
        #expect(first.lastError?.contains("Welcome to nginx!") == true)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.status) == [200, 200] && simulation.lake[1]!.count == 3)
    }

    // MARK: Isolation

    @Test func isolationCostsStayWithinTwoKLogNAndProvenRowsAreSentAlone() {
        for bad in [Set([0]), [63], [17], [5, 40], [0, 1, 2], [10, 20, 30, 50]] {
            let simulation = simulation(rows: 64, bad: bad)
            simulation.runUntilQuiet()
            expectDrained(simulation)
            let answered = answered(simulation).count
            #expect(answered <= 2 * bad.count * 6 + 1, "\(bad): \(answered) answered requests")
            #expect(simulation.deadLetters.map(\.seqs).flatMap { $0 }.sorted() == bad.sorted().map(Int64.init))
            // Every refused row was refused alone before it was dead-lettered.
            for seq in bad { #expect(simulation.requests.contains { $0.seqs == [Int64(seq)] && $0.status == 400 }) }
            #expect(simulation.spool[1]!.state.kind == .delivering)
        }
    }

    /// Names in a 400's errors (`row 5: …`) are not a documented promise: a named row is sent alone before
    /// it is dead-lettered, like any other, and the rows around it go again.
    @Test func rowsA400NamesAreSentAloneAndTheRestAgain() {
        let simulation = simulation(rows: 100, bad: [5, 60]) { $0.namesRows = true }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(
            simulation.requests.map { [$0.seqs.count, $0.status ?? 0] } == [
                [100, 400], [5, 200], [1, 400], [94, 400], [54, 200], [1, 400], [39, 200],
            ])
        #expect(simulation.deadLetters.map(\.seqs) == [[5], [60]])
        #expect(simulation.deadLetters[0].failure.errors == ["row 0: refused; request rejected"])
    }

    /// Names the request cannot have (an index past its rows, one named twice) mean the numbering is not
    /// the one assumed (1-based, say): no name of that answer is trusted.
    @Test func namesOutOfRangeOrRepeatedAreNotTrusted() {
        #expect(DeliveryVerdict.rowErrors(["row 0: x", "row 3: y"], rows: 4).map(\.index) == [0, 3])
        #expect(DeliveryVerdict.rowErrors(["row 0: x", "row 4: y"], rows: 4).isEmpty)
        #expect(DeliveryVerdict.rowErrors(["row 2: x", "row 2: y"], rows: 4).isEmpty)
        #expect(DeliveryVerdict.rowErrors(["row -1: x"], rows: 4).isEmpty)
        #expect(DeliveryVerdict.rowErrors(["schema mismatch", "row 1: y"], rows: 4).map(\.index) == [1])
        let answer = StreamAPIResponse(body: Array(#"{"rejected_rows":1,"successful_rows":9,"errors":["row 0: x","row 99: y"]}"#.utf8))
        #expect(
            DeliveryVerdict(status: 200, answer: answer, retryAfter: nil, sentRows: 10) == .partlyRejected(count: 1, named: nil))
    }

    @Test(arguments: 0..<12)
    func aTransientFailureAtAnyDepthOfIsolationRepeatsOnlyThatRequest(depth: Int) {
        let calm = simulation(rows: 64, bad: [37])
        calm.runUntilQuiet()
        let expected = answered(calm).map(\.seqs)
        guard depth < expected.count else { return }
        for failure: Int? in [429, 500, nil] {
            let simulation = simulation(rows: 64, bad: [37]) { $0.forced = Array(repeating: 200, count: depth) + [failure] }
            simulation.runUntilQuiet()
            expectDrained(simulation)
            // The same requests as without the failure, the failed one twice in a row.
            let sent = simulation.requests.map(\.seqs)
            #expect(answered(simulation).map(\.seqs) == expected)
            #expect(sent[depth] == sent[depth + 1])
        }
    }

    @Test(arguments: 1..<12)
    func aRestartInTheMiddleOfIsolationResumesWhereItStopped(depth: Int) {
        let calm = simulation(rows: 64, bad: [37])
        calm.runUntilQuiet()
        let expected = answered(calm).map(\.seqs)
        guard depth < expected.count else { return }
        for lostAnswer in [false, true] {
            let simulation = simulation(rows: 64, bad: [37])
            // Run until `depth` answers are in (and, unless the answer is lost, recorded).
            run(simulation) { simulation.requests.count >= depth && (lostAnswer || !simulation.isBusy) }
            simulation.restart()
            simulation.runUntilQuiet()
            expectDrained(simulation)
            let sent = answered(simulation).map(\.seqs)
            // Resumed, not restarted from the whole batch: at most the lost answer is asked again.
            #expect(sent.count <= expected.count + (lostAnswer ? 1 : 0))
            #expect(sent[depth] == (lostAnswer ? sent[depth - 1] : expected[depth]))
            #expect(sent.filter { $0.count == 64 }.count == (lostAnswer && depth == 1 ? 2 : 1))
        }
    }

    @Test func rowsThatExpireDuringIsolationAreDeadLetteredAsExpiredAndTheProvenOnesStayDelivered() {
        let settings = DeliverySimulation.settings(initial: 1000, max: 1000, maxAge: .seconds(10))
        let simulation = simulation(rows: 16, bad: [12], settings: settings)
        // Whole batch refused, its left half written, then every request fails transiently.
        simulation.api.forced = [200, 200] + Array(repeating: nil, count: 30)
        run(simulation) { answered(simulation).count >= 2 && !simulation.isBusy }
        let delivered = simulation.spool[1]!.left.filter { $0.value == .delivered }.keys.sorted()
        simulation.runUntilQuiet()
        #expect(simulation.queued == 0)
        let expired = simulation.deadLetters.filter { $0.failure.reason.hasPrefix("expired") }
        #expect(expired.count == 1 && expired[0].failure.status == nil)
        #expect(Set(expired[0].seqs).isDisjoint(with: delivered) && !delivered.isEmpty)
        #expect(expired[0].seqs.contains(12))
        #expect(simulation.spool[1]!.batches.isEmpty)
    }

    /// Rows older than `retry.max_age` that were never tried (no API key for a week, a stopped daemon) went
    /// straight to the dead letters as "expired" once a key came, without one request. They go once more;
    /// only a failure then expires them.
    @Test func rowsOlderThanMaxAgeAreTriedOnceBeforeTheyExpire() {
        let settings = DeliverySimulation.settings(initial: 1000, max: 1000, maxAge: .seconds(10))
        let waited = simulation(rows: 4, settings: settings)
        waited.hasKey = false
        waited.runUntilQuiet(limit: 50)
        waited.advance(by: .seconds(60))
        waited.hasKey = true
        waited.runUntilQuiet()
        expectDrained(waited)
        #expect(waited.deadLetters.isEmpty && waited.requests.map(\.status) == [200])

        let failing = simulation(rows: 4, settings: settings) { $0.forced = [503] }
        failing.hasKey = false
        failing.runUntilQuiet(limit: 50)
        failing.advance(by: .seconds(60))
        failing.hasKey = true
        failing.runUntilQuiet()
        #expect(failing.requests.map(\.status) == [503])
        #expect(failing.deadLetters.map { $0.failure.reason.hasPrefix("expired") } == [true])

        // A hold is a failure too: a table the API does not have expires once its rows are old enough.
        let missing = simulation(rows: 4, settings: settings)
        missing.api.missingTables = [1]
        missing.runUntilQuiet()
        #expect(missing.requests.allSatisfy { $0.status == 404 } && !missing.requests.isEmpty)
        #expect(missing.deadLetters.map { $0.failure.reason.hasPrefix("expired") } == [true])
    }

    /// Every row refused (a schema change): isolation cost two requests and a dead letter per row, at full
    /// speed, and blocked a merge table meanwhile. After 8 rows refused alone in a row for the same reason,
    /// the target is held, then tries one more row after each wait; the other targets keep flowing.
    @Test func aTableWhoseEveryRowIsRefusedIsHeldAfterEightRowsRefusedAlone() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(initial: 1000, max: 8000), seed: 3, workers: 2)
        let broken = simulation.addTarget(Self.append)
        let fine = simulation.addTarget(Self.append)
        simulation.append(broken, (0..<64).map { _ in Row(bad: true) })
        simulation.append(fine, (0..<8).map { _ in Row() })
        run(simulation) { simulation.spool[broken]!.state.kind == .heldRefusingRows }
        let brokenRequests = simulation.requests.filter { $0.targetID == broken }
        #expect(
            brokenRequests.count <= 6 + 2 * DeliveryMachine.refusedAloneBeforeHolding, "\(brokenRequests.count) requests before the hold")
        #expect(simulation.deadLetters.count == DeliveryMachine.refusedAloneBeforeHolding)
        #expect(simulation.spool[broken]!.lastError?.hasPrefix("the API refused the last 8 rows each alone for the same reason") == true)
        // While held (at least retry.initial), nothing goes for it; the other target is delivered.
        let before = brokenRequests.count
        for _ in 0..<20 { for worker in 0..<2 { _ = simulation.act(worker) } }
        #expect(simulation.requests.filter { $0.targetID == broken }.count == before, "a request went for the held table")
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.spool[fine]!.left.values.allSatisfy { $0 == .delivered })
        #expect(simulation.deadLetters.flatMap(\.seqs).count == 64, "held, not dropped: every row is refused alone in the end")
    }

    /// A 422 is about the request, not its rows (a tag or key the API does not take): when it comes again for
    /// the table's next request, with the same reason, every batch would follow into the dead letters at full
    /// speed. The first batch is dead-lettered; then the table is held, and flows again once fixed.
    @Test func theSame422TwiceInARowHoldsTheTableInsteadOfDeadLetteringEveryBatch() {
        let simulation = simulation(rows: 30, settings: DeliverySimulation.settings(maxRows: 10, initial: 1000, max: 1000)) {
            $0.forced = [422, 422, 422]
        }
        run(simulation) { simulation.spool[1]!.state.kind == .heldRefusingRows }
        #expect(simulation.deadLetters.map(\.seqs.count) == [10], "only the first batch went to the dead letters")
        #expect(simulation.spool[1]!.lastError?.contains("refused this table's requests twice in a row") == true)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.status).prefix(3) == [422, 422, 422])
        #expect(simulation.deadLetters.count == 1 && simulation.lake[1]!.count == 20)
    }

    /// The same with rows written a few at a time: each batch resolved and the target went idle before the
    /// next, and with it what the refusals had taught, so no table was ever held. A probe trickled a schema
    /// change's rows (one a request) and a refused tag (a batch every 1.5 s): every row went to the dead
    /// letters, the table read "idle" and `status --check` said ok.
    @Test func rowsRefusedAloneBatchAfterBatchHoldTheTableWhenWrittenOneAtATime() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(initial: 1000, max: 8000), seed: 5, workers: 2)
        let broken = simulation.addTarget(Self.append)
        for _ in 0..<DeliveryMachine.refusedAloneBeforeHolding {
            simulation.append(broken, [Row(bad: true)])
            simulation.runUntilQuiet()
        }
        #expect(simulation.deadLetters.count == DeliveryMachine.refusedAloneBeforeHolding)
        #expect(simulation.spool[broken]!.state.kind == .heldRefusingRows, "\(simulation.spool[broken]!.state)")
        // The next row waits for the hold, then goes alone: refused, the hold grows; a good row ends it.
        simulation.append(broken, [Row(bad: true)])
        for _ in 0..<20 { for worker in 0..<2 { _ = simulation.act(worker) } }
        #expect(simulation.requests.filter { $0.targetID == broken }.count == DeliveryMachine.refusedAloneBeforeHolding, "sent while held")
        simulation.runUntilQuiet()
        #expect(simulation.spool[broken]!.state.kind == .heldRefusingRows)
        simulation.append(broken, [Row(), Row(bad: true)])
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.lake[broken]!.count == 1)
        #expect(simulation.deadLetters.count == DeliveryMachine.refusedAloneBeforeHolding + 2)
    }

    /// What an idle target remembers ends with SIGUSR1 (the hold: the operator fixed the table) and with
    /// retry.max_age of idleness (the reasons too: a refusal that old says little about the table now).
    @Test func anIdleTargetsHoldEndsWithAFlushAndItsMemoryWithMaxAge() {
        func held() -> (DeliverySimulation, Int64) {
            let simulation = DeliverySimulation(
                settings: DeliverySimulation.settings(initial: 60_000, max: 60_000, maxAge: .seconds(3600)), seed: 7, workers: 2)
            let target = simulation.addTarget(Self.append)
            for _ in 0..<DeliveryMachine.refusedAloneBeforeHolding {
                simulation.append(target, [Row(bad: true)])
                simulation.runUntilQuiet(limit: 200)
            }
            #expect(simulation.spool[target]!.state.kind == .heldRefusingRows)
            return (simulation, target)
        }
        func sentAtOnce(_ simulation: DeliverySimulation, _ target: Int64) -> Bool {
            let before = simulation.requests.count
            simulation.append(target, [Row()])
            simulation.advance(by: .milliseconds(200))  // past linger, well within the hold
            for _ in 0..<20 { for worker in 0..<2 { _ = simulation.act(worker) } }
            return simulation.requests.count > before
        }
        let (flushed, first) = held()
        #expect(flushed.flush() == [first], "the idle target whose hold ended, for its state in the spool")
        #expect(sentAtOnce(flushed, first), "the hold outlived SIGUSR1")
        let (waited, second) = held()
        #expect(!sentAtOnce(waited, second), "held without a flush")
        let (forgotten, third) = held()
        forgotten.advance(by: .seconds(3601))
        forgotten.append(third, [Row(bad: true)])
        forgotten.runUntilQuiet(limit: 200)
        #expect(forgotten.spool[third]!.state.kind != .heldRefusingRows, "a refusal an hour old counted toward a hold")
    }

    /// An API slower than `[api] timeout` writes every attempt: with a fixed wait the batch went again after
    /// each backoff until retry.max_age (a probe saw 50 copies in 15 s). Each timeout in a row doubles the next
    /// wait, up to 8 times the timeout; an answer brings it back.
    @Test func timeoutsInARowLengthenTheWaitForAnAnswerSoASlowAPIIsNotSentEachBatchForever() {
        let simulation = simulation(rows: 10, settings: DeliverySimulation.settings(initial: 50, max: 50)) { $0.slowness = 3 }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.patience) == [1, 2, 4])
        #expect(simulation.requests.map(\.status) == [nil, nil, 200])
        #expect(simulation.lake[1]!.values.allSatisfy { $0 == 3 }, "each row written once per attempt, three attempts")
        #expect(DeliveryMachine.patience(afterTimeouts: 0) == 1 && DeliveryMachine.patience(afterTimeouts: 2) == 4)
        #expect(DeliveryMachine.patience(afterTimeouts: 3) == DeliveryMachine.maxPatience)
        #expect(DeliveryMachine.patience(afterTimeouts: 1000) == DeliveryMachine.maxPatience)
    }

    @Test func theSame422ForTheNextBatchHoldsTheTableAlsoAfterItWentIdle() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(initial: 1000, max: 1000), seed: 5, workers: 2)
        let target = simulation.addTarget(Self.append)
        simulation.api.forced = [422, 422, 422]
        simulation.append(target, (0..<10).map { _ in Row() })
        simulation.runUntilQuiet()
        #expect(simulation.deadLetters.map(\.seqs.count) == [10])
        simulation.append(target, (0..<10).map { _ in Row() })
        run(simulation) { simulation.spool[target]!.state.kind == .heldRefusingRows }
        #expect(simulation.deadLetters.count == 1, "the second batch went to the dead letters too")
        #expect(simulation.spool[target]!.lastError?.contains("refused this table's requests twice in a row") == true)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.lake[target]!.count == 10)
    }

    @Test func anAppendBatchPartlyRejectedWithoutNamesIsKeptWholeAsPartialOnce() {
        let simulation = simulation(rows: 10, bad: [2, 7]) { $0.refusal = .rows }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.count == 1)
        #expect(simulation.deadLetters.count == 1)
        let failure = simulation.deadLetters[0].failure
        #expect(failure.partial && failure.reason.hasPrefix("partially rejected: 2 of 10 rows rejected and the others written"))
        #expect(simulation.lake[1]!.count == 8)
    }

    /// A 200 rejecting every row of the request wrote none: the entry is not partial, so `dlq replay`
    /// takes it without `--include-written`.
    @Test func anAppendBatchWhollyRejectedByATwoHundredIsNotPartial() {
        let simulation = simulation(rows: 10, bad: Set(0..<10)) { $0.refusal = .rows }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.count == 1 && simulation.deadLetters.count == 1)
        let failure = simulation.deadLetters[0].failure
        #expect(!failure.partial && failure.reason.hasPrefix("rejected by the API (all 10 rows of the request)"), "\(failure.reason)")
    }

    /// `Retry-After: 0` (or a date already past) once meant no wait at all: every 429 answered by the same
    /// request at once, each with a commit, a read and gzip. It lengthens the backoff, never shortens it.
    @Test func aRetryAfterOfZeroStillWaitsTheBackoff() {
        let simulation = simulation(rows: 3, settings: DeliverySimulation.settings(initial: 50, max: 50)) { $0.forced = [429] }
        simulation.api.retryAfter = 0
        untilFirstAnswer(simulation)
        simulation.advance(by: .milliseconds(49))
        #expect(!simulation.act(0), "sent again before the backoff")
        simulation.advance(by: .milliseconds(1))
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.status) == [429, 200])
    }

    @Test func anAppendBatchPartlyRejectedWithNamedRowsDeadLettersExactlyThose() {
        let simulation = simulation(rows: 10, bad: [2, 7]) {
            $0.refusal = .rows
            $0.namesRows = true
        }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.count == 1)
        #expect(simulation.deadLetters.map(\.seqs) == [[2, 7]])
        #expect(!simulation.deadLetters[0].failure.partial)
        #expect(simulation.deadLetters[0].failure.reason.hasPrefix("rejected by the API (2 of 10 rows of the request)"))
        #expect(simulation.spool[1]!.left.filter { $0.value == .delivered }.count == 8)
    }

    @Test func oneRowRejectedAloneIsNotCalledPartial() {
        let simulation = simulation(rows: 1, bad: [0]) { $0.refusal = .rows }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        let failure = simulation.deadLetters[0].failure
        #expect(!failure.partial && failure.reason == "rejected by the API: refused")
    }

    @Test func aMergeBatchPartlyRejectedWithoutNamesIsSearchedByHalves() {
        let simulation = simulation(Self.merge, rows: 32, bad: [9, 20]) { $0.refusal = .rows }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.deadLetters.map(\.seqs).sorted { $0[0] < $1[0] } == [[9], [20]])
        #expect(simulation.deadLetters.allSatisfy { !$0.failure.partial && $0.failure.status == 200 })
        #expect(simulation.requests.count > 3)
    }

    // MARK: Holds

    @Test func aRefusedKeyPausesEveryTargetAndA404HoldsOnlyItsTable() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(initial: 1000, max: 1000), seed: 3, workers: 1)
        let a = simulation.addTarget(Self.append)
        let b = simulation.addTarget(SpoolTarget(table: "bronze.other", mode: .append))
        simulation.append(a, [Row(), Row()])
        simulation.append(b, [Row(), Row()])
        simulation.api.forced = [401]
        untilFirstAnswer(simulation)
        #expect(simulation.spool[simulation.requests[0].targetID]!.state.kind == .authFailing)
        simulation.advance(by: .milliseconds(500))
        #expect(!simulation.act(0), "every target waits while the key is refused")
        simulation.runUntilQuiet()
        expectDrained(simulation)

        simulation.api.missingTables = [a]
        simulation.append(a, [Row()])
        simulation.append(b, [Row()])
        simulation.advance(by: .milliseconds(200))
        for _ in 0..<20 { simulation.act(0) }
        #expect(
            simulation.spool[a]!.state.kind == .heldTableNotFound && simulation.spool[a]!.rows.count - simulation.spool[a]!.left.count == 1)
        #expect(simulation.spool[b]!.left.count == 3, "the other table keeps flowing")
        simulation.api.missingTables = []
        simulation.runUntilQuiet()
        expectDrained(simulation)
    }

    @Test func withoutAKeyNothingIsSentAndEachWaitingTargetSaysSoOnce() {
        let simulation = simulation(rows: 2)
        simulation.hasKey = false
        simulation.runUntilQuiet(limit: 50)
        #expect(simulation.requests.isEmpty)
        #expect(simulation.spool[1]!.state == .authFailing(until: nil) && simulation.spool[1]!.lastError == "no API key configured")
        simulation.hasKey = true
        simulation.runUntilQuiet()
        expectDrained(simulation)
    }

    // MARK: Batches

    /// The earlier writes of a key leave with the write that supersedes them: superseded once it is
    /// written, in its dead letter when the API rejects it. They once left at registration, and a rejected
    /// last write then lost every value of its key in the batch.
    @Test(arguments: [DeliverySimulation.API.Refusal.rows, .wholeRequest])
    func theEarlierWritesOfARejectedKeyGoIntoItsDeadLetter(refusal: DeliverySimulation.API.Refusal) {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(), seed: 1, workers: 1)
        simulation.api.refusal = refusal
        let id = simulation.addTarget(Self.merge)
        simulation.append(id, [Row(key: "a"), Row(key: "b"), Row(key: "a"), Row(key: "a", bad: true), Row(key: "b")])
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.deadLetters.map(\.seqs) == [[0, 2, 3]])
        #expect(
            simulation.deadLetters[0].failure.reason.hasSuffix("(with 2 earlier writes of the same keys in the batch, which were not sent)")
        )
        #expect(simulation.spool[id]!.left[1] == .superseded && simulation.spool[id]!.left[4] == .delivered)
    }

    @Test func mergeSendsOnlyTheLastWriteOfEachKeyAndTheEarlierOnesLeaveWithIt() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(), seed: 1, workers: 1)
        let id = simulation.addTarget(Self.merge)
        simulation.append(id, ["a", "b", "a", "c", "b", nil].map { Row(key: $0) })
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.seqs) == [[2, 3, 4, 5]])
        #expect(simulation.spool[id]!.left[0] == .superseded && simulation.spool[id]!.left[1] == .superseded)
        let writes = DeliveryMachine.lastWritePerKey(["a", "b", "a", nil, "c", "b", nil])
        #expect(writes.kept == [2, 3, 4, 5, 6])
        #expect(writes.supersededBy == [2: [0], 5: [1]])
    }

    @Test func aMergeBatchLeftByVersion1IsDedupedWhenItIsLoaded() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(), seed: 1, workers: 1)
        let id = simulation.addTarget(Self.merge)
        simulation.append(id, ["a", "b", "a", "c", "b"].map { Row(key: $0) })
        simulation.registerAsVersion1(id, id: "v1", range: 0..<5)
        simulation.restart()
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.map(\.seqs) == [[2, 3, 4]])
        #expect(simulation.spool[id]!.left[0] == .superseded && simulation.spool[id]!.left[1] == .superseded)
    }

    @Test func mergeHasOneBatchInFlightAndCutsTheNextOnlyOnceTheFirstIsResolved() {
        let simulation = simulation(Self.merge, rows: 30, bad: [3], settings: DeliverySimulation.settings(maxRows: 10), workers: 3)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        // Batches in seq order: every request of a batch comes before any of the next.
        let firstSeqs = simulation.requests.map { $0.seqs[0] / 10 }
        #expect(firstSeqs == firstSeqs.sorted())
    }

    @Test func aCleanBatchCostsTwoCommits() {
        let simulation = simulation(rows: 50)
        var writes = 0
        while simulation.queued > 0 || simulation.isBusy {
            if case .register? = simulation.workers[0] { writes += 1 }
            if case .record? = simulation.workers[0] { writes += 1 }
            if !simulation.act(0) { simulation.advanceToNextWakeUp() }
        }
        #expect(writes == 2)
        expectDrained(simulation)
    }

    @Test func aBatchWaitingForItsRetryLetsTheOtherBatchGoButNoNewOneIsCut() {
        let settings = DeliverySimulation.settings(maxRows: 10, initial: 1000, max: 1000)
        let simulation = simulation(rows: 30, settings: settings, workers: 2)
        simulation.api.forced = [503]
        simulation.runUntilQuiet(limit: 12)
        // The first batch waits a second; the second was delivered meanwhile; the third is not cut yet.
        #expect(simulation.spool[1]!.left.count == 10)
        #expect(simulation.spool[1]!.batches.count == 1)
        simulation.runUntilQuiet()
        expectDrained(simulation)
    }

    @Test func idleTargetsAreDroppedAndComeBackWithTheirNextRows() {
        let simulation = DeliverySimulation(settings: DeliverySimulation.settings(), seed: 9, workers: 2)
        let targets = (0..<50).map { simulation.addTarget(SpoolTarget(table: "bronze.t\($0)", mode: .append)) }
        for id in targets { simulation.append(id, [Row()]) }
        simulation.runUntilQuiet()
        expectDrained(simulation)
        _ = simulation.machine.nextWakeUp(after: simulation.now)
        simulation.act(0)
        #expect(simulation.machine.targetCount == 0, "a decision costs what the active targets do, not every target seen")
        simulation.append(targets[7], [Row(), Row()])
        #expect(simulation.machine.targetCount == 1)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.suffix(1).map(\.seqs) == [[1, 2]])
    }

    /// `dlq replay` (another process) puts rows back at the end of an idle target's log; the daemon learns
    /// of them at its next poll. An intake append arriving first must not make the machine start the
    /// target past them: they would never be sent, and `delivered_seq` would stay below them for good.
    @Test func rowsAnotherProcessAppendedToADroppedTargetAreSentWhenAnAppendBringsItBack() {
        let simulation = simulation(rows: 2)
        simulation.runUntilQuiet()
        expectDrained(simulation)
        simulation.act(0)
        #expect(simulation.machine.targetCount == 0)
        simulation.append(1, [Row(), Row(), Row()], announce: false)  // dlq replay: seqs 2..<5
        simulation.append(1, [Row()])  // intake, before the next poll: seq 5
        simulation.runUntilQuiet()
        expectDrained(simulation)
        #expect(simulation.requests.suffix(1).map(\.seqs) == [[2, 3, 4, 5]])
    }

    @Test func batchesAreCutAtMaxRowsOrAfterLingerOrOnFlush() {
        let simulation = simulation(rows: 3, settings: DeliverySimulation.settings(maxRows: 3, linger: .seconds(5)))
        #expect(simulation.act(0), "max_rows rows wait: cut at once")
        simulation.runUntilQuiet(limit: 10)
        simulation.append(1, [Row()])
        #expect(!simulation.act(0), "one row waits for linger")
        simulation.advance(by: .seconds(5))
        #expect(simulation.act(0))
        simulation.runUntilQuiet(limit: 10)
        simulation.append(1, [Row()])
        #expect(!simulation.act(0))
        simulation.flush()
        #expect(simulation.act(0), "flush waives linger")
        simulation.runUntilQuiet(limit: 10)
        expectDrained(simulation)
    }

    /// Records bigger than `max_bytes / max_rows` fill a batch by bytes first: such a batch goes at once
    /// too, instead of waiting for linger (the peer comparison's last 40,000 records waited ~0.7 s).
    /// A batch at least a quarter full goes once its log stood still for a tenth of linger (at most
    /// 100 ms), instead of waiting out linger: the end of a burst. Less than a quarter waits for linger,
    /// and so does a quarter whose log keeps growing.
    @Test func aQuarterFullBatchGoesWhenTheBurstEnds() {
        let simulation = DeliverySimulation(
            settings: DeliverySimulation.settings(maxRows: 100, linger: .seconds(2)), seed: 7, workers: 1)
        let id = simulation.addTarget(Self.append)
        simulation.append(id, (0..<24).map { _ in Row() })
        simulation.advance(by: .milliseconds(150))
        #expect(!simulation.act(0), "24 of 100 rows: less than a quarter waits for linger")
        simulation.append(id, [Row()])
        #expect(!simulation.act(0), "a quarter, but rows just came")
        #expect(simulation.machine.nextWakeUp(after: simulation.now) == simulation.now.instant + .milliseconds(100))
        simulation.advance(by: .milliseconds(60))
        simulation.append(id, [Row()])
        simulation.advance(by: .milliseconds(60))
        #expect(!simulation.act(0), "still growing 60 ms ago")
        simulation.advance(by: .milliseconds(40))
        #expect(simulation.act(0), "the log stood still for 100 ms: the batch goes")
        while simulation.act(0) {}
        #expect(simulation.requests.map(\.seqs.count) == [26])
        expectDrained(simulation)

        // The rest of a burst that filled a batch goes when the log stands still, however few rows.
        simulation.append(id, (0..<103).map { _ in Row() })
        #expect(simulation.act(0), "a full batch")
        while simulation.act(0) {}
        #expect(!simulation.act(0), "3 rows left, the log just grew")
        simulation.advance(by: .milliseconds(100))
        #expect(simulation.act(0), "the burst's rest, 100 ms after it ended")
        while simulation.act(0) {}
        #expect(simulation.requests.map(\.seqs.count) == [26, 100, 3])
        // Long after that burst, a few rows are a trickle again: linger.
        simulation.advance(by: .seconds(2))
        simulation.append(id, [Row()])
        simulation.advance(by: .milliseconds(150))
        #expect(!simulation.act(0), "one row, no burst: linger")
        simulation.advance(by: .seconds(2))
        #expect(simulation.act(0))
        while simulation.act(0) {}
        expectDrained(simulation)
    }

    /// One worker and one append target (its id returned), batches of at most 1,000 rows and `maxBytes`.
    func byteLimitedSimulation(maxBytes: Int, linger: Duration) -> (DeliverySimulation, Int64) {
        var settings = DeliverySimulation.settings(maxRows: 1000, linger: linger)
        settings.maxBytes = maxBytes
        let simulation = DeliverySimulation(settings: settings, seed: 7, workers: 1)
        return (simulation, simulation.addTarget(Self.append))
    }

    @Test func aBatchFullByBytesIsCutAtOnce() {
        let (simulation, id) = byteLimitedSimulation(maxBytes: 1000, linger: .seconds(5))
        /// Worker 0 acts until it has nothing to do now (the clock stands still).
        func actWhileDue() { while simulation.act(0) {} }
        simulation.append(id, (0..<5).map { _ in Row(size: 150) })
        #expect(!simulation.act(0), "750 of 1,000 bytes wait: linger")
        simulation.append(id, (0..<5).map { _ in Row(size: 150) })
        #expect(simulation.act(0), "1,500 bytes wait: a full batch is cut at once")
        actWhileDue()
        #expect(simulation.requests.map(\.seqs.count) == [6], "a full batch by bytes: 6 rows of 150")
        simulation.append(id, (0..<3).map { _ in Row(size: 150) })
        #expect(simulation.act(0), "what was left and what came count together: 1,050 bytes")
        actWhileDue()
        #expect(simulation.requests.map(\.seqs.count) == [6, 6], "one row left, waiting for linger")
        // Rows the machine learns of only from the spool's row (a poll) have no size: they wait for linger
        // rather than be guessed at.
        simulation.append(id, (0..<10).map { _ in Row(size: 150) }, announce: false)
        simulation.observe()
        #expect(!simulation.act(0), "rows seen in a poll wait for linger")
        simulation.advance(by: .seconds(5))
        simulation.runUntilQuiet(limit: 40)
        #expect(simulation.requests.map(\.seqs.count) == [6, 6, 6, 5])
        expectDrained(simulation)
    }

    @Test func aFullBatchWhoseRegistrationFailedIsCutAgainAfterThePauseNotAfterLinger() {
        let (simulation, id) = byteLimitedSimulation(maxBytes: 1000, linger: .seconds(60))
        simulation.failingRegistrations = 1
        // Exactly a full batch by bytes, and nothing after it: no burst goes on for its rows to join.
        simulation.append(id, (0..<5).map { _ in Row(size: 200) })
        while simulation.act(0) {}
        #expect(simulation.requests.isEmpty, "the batch could not be registered")
        simulation.advance(by: DeliveryMachine.storagePause)
        while simulation.act(0) {}
        #expect(simulation.requests.map(\.seqs) == [Array(0..<5)], "cut again as full as it was, without waiting out linger")
        expectDrained(simulation)
    }
}

import Foundation

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// A ``DeliveryMachine`` with its I/O faked in memory: a spool (rows per target, batches, what left and
/// why) and a Stream API (what was written, how often, in what order), driven by workers that act one at
/// a time. The fakes follow the real ledger's and the API's rules closely enough to check the machine's
/// decisions; every rule the real code relies on is checked as it happens (``violations``).
final class DeliverySimulation {
    /// A spooled row as the fake API sees it.
    struct Row {
        var key: String?
        /// The API refuses this row (a 400 for the whole request, or a rejected row in a 200).
        var bad = false
        var appendedAt: Double = 0
        /// Stored bytes (with the newline), for `[batch] max_bytes`.
        var size = 100
    }

    enum Leave: Equatable {
        case delivered
        case deadLettered
        /// A later write of its merge key in the same batch: never sent.
        case superseded
    }

    struct OpenBatch {
        var range: Range<Int64>
        var attempts = 0
        var parts: [DeliveryLedger.Part] = []
        /// At registration: rows to send, and those the API will refuse.
        var live: Int
        var bad: Int
    }

    /// One target of the fake spool.
    struct TargetSpool {
        var target: SpoolTarget
        var rows: [Row] = []
        var left: [Int64: Leave] = [:]
        var batches: [String: OpenBatch] = [:]
        var state: TargetState = .idle
        var lastError: String?
    }

    struct DeadLetter {
        var targetID: Int64
        var seqs: [Int64]
        var failure: DeliveryLedger.Failure
    }

    /// One request the fake API received.
    struct Request {
        var targetID: Int64
        var batchID: String
        var seqs: [Int64]
        /// `nil`: no answer.
        var status: Int?
        /// How many times `[api] timeout` it waited for its answer.
        var patience = 1
    }

    /// How the fake API behaves.
    struct API {
        enum Refusal {
            /// 400 for a request holding a bad row; nothing written.
            case wholeRequest
            /// 200 with the bad rows rejected, the others written.
            case rows
        }

        var refusal = Refusal.wholeRequest
        /// Errors say `row N: …` (else only the reason, as the reference documents).
        var namesRows = false
        /// Requests with more rows get 413.
        var maxRows = Int.max
        var serverErrorRate = 0.0
        var rateLimitRate = 0.0
        var retryAfter: Double? = 1
        var noAnswerRate = 0.0
        /// Rows written, then no answer.
        var dropAfterCommitRate = 0.0
        /// How many times `[api] timeout` the API takes to answer, writing the rows all the same: a request
        /// that waits less times out after the commit (0: answers in time).
        var slowness = 0
        var missingTables: Set<Int64> = []
        var refusesKey = false
        /// Statuses for the next requests, in order, before any other rule (`nil`: no answer). A forced
        /// 200 still rejects bad rows as ``refusal`` says.
        var forced: [Int?] = []
        /// The next this many requests get a 200 that is not a Stream API answer (a proxy's page, with no
        /// row counts); nothing is written.
        var notStreamAPIAnswers = 0

        mutating func heal() {
            (serverErrorRate, rateLimitRate, noAnswerRate, dropAfterCommitRate, slowness) = (0, 0, 0, 0, 0)
            missingTables = []
            refusesKey = false
        }
    }

    private(set) var spool: [Int64: TargetSpool] = [:]
    private(set) var deadLetters: [DeadLetter] = []
    /// Per target, per seq: how many times the API wrote the row.
    private(set) var lake: [Int64: [Int64: Int]] = [:]
    /// Per target, per seq: writes whose confirmation was lost (a drop after commit, a restart before the
    /// record): each allows one duplicate.
    private(set) var unconfirmed: [Int64: [Int64: Int]] = [:]
    /// Per merge target and key: the highest seq written, to check upserts arrive in order.
    private var lastWrittenSeq: [Int64: [String: Int64]] = [:]
    private(set) var requests: [Request] = []
    private(set) var violations: [String] = []
    /// Every batch ever registered, as it was at registration, with the restarts it lived through.
    private(set) var registered: [String: (live: Int, bad: Int, restarts: Int)] = [:]
    var api = API()
    var hasKey = true
    /// The next this many batch registrations fail to be written (a full disk, a locked spool).
    var failingRegistrations = 0
    private(set) var machine: DeliveryMachine
    private(set) var settings: DeliveryMachine.Settings
    private(set) var now: DeliveryMachine.Now
    private var random: SplitMix64
    private let seed: UInt64
    private(set) var restarts = 0
    /// Each worker's step in progress, and the rows written by the answer its pending record is about.
    private(set) var workers: [DeliveryMachine.Step?]
    private var awaitingRecord: [(targetID: Int64, seqs: [Int64])?]

    init(settings: DeliveryMachine.Settings, seed: UInt64, workers: Int = 2) {
        self.settings = settings
        self.seed = seed
        self.random = SplitMix64(seed: seed ^ 0x5EED)
        self.now = DeliveryMachine.Now(instant: ContinuousClock.now, date: Date(timeIntervalSince1970: 1_800_000_000))
        self.machine = DeliveryMachine(restoring: [], settings: settings, seed: seed, now: now)
        self.workers = Array(repeating: nil, count: workers)
        self.awaitingRecord = Array(repeating: nil, count: workers)
    }

    static func settings(
        maxRows: Int = 1000, maxBytes: ByteSize = .mebibytes(4), linger: Duration = .milliseconds(100), concurrency: Int = 2,
        initial: Int64 = 50, max: Int64 = 500, maxAge: HumanDuration = .seconds(86_400)
    ) -> DeliveryMachine.Settings {
        var configuration = AgentConfiguration()
        configuration.batch.maxRows = maxRows
        configuration.batch.maxBytes = maxBytes
        configuration.batch.linger = HumanDuration(milliseconds: Int64(linger.seconds * 1000))
        configuration.batch.concurrency = concurrency
        configuration.retry.initial = HumanDuration(milliseconds: initial)
        configuration.retry.max = HumanDuration(milliseconds: max)
        configuration.retry.maxAge = maxAge
        return DeliveryMachine.Settings(configuration)
    }

    // MARK: The spool's side

    /// Adds a target (ids from 1) and returns its id.
    @discardableResult
    func addTarget(_ target: SpoolTarget) -> Int64 {
        let id = Int64(spool.count + 1)
        spool[id] = TargetSpool(target: target)
        return id
    }

    /// Appends rows, as an intake commit would, and tells the machine as the writer does (the range and
    /// its bytes); with `announce` false the machine sees them only at the next ``observe()`` (a poll).
    func append(_ targetID: Int64, _ rows: [Row], announce: Bool = true) {
        let start = Int64(spool[targetID]!.rows.count)
        spool[targetID]!.rows += rows.map { row in
            var row = row
            row.appendedAt = now.date.timeIntervalSince1970
            return row
        }
        guard announce else { return }
        let target = spool[targetID]!
        machine.observe(
            [
                DeliveryMachine.LogEnd(
                    targetID: targetID, target: target.target, start: start, end: Int64(target.rows.count),
                    bytes: rows.reduce(0) { $0 + $1.size })
            ], now: now)
    }

    func observe() {
        machine.observe(targetRows(), now: now)
    }

    /// SIGUSR1: everything pending is due now. Returns the idle targets whose hold it ended.
    @discardableResult
    func flush() -> [Int64] {
        let released = machine.flushNow()
        observe()
        return released
    }

    private func targetRows() -> [SpoolReader.TargetRow] {
        spool.keys.sorted().map { id in
            let target = spool[id]!
            var delivered: Int64 = 0
            while target.left[delivered] != nil { delivered += 1 }
            return SpoolReader.TargetRow(id: id, target: target.target, nextSeq: Int64(target.rows.count), deliveredSeq: delivered)
        }
    }

    /// A batch as version 1 of the spool registered it: the range only, superseded merge writes still queued.
    func registerAsVersion1(_ targetID: Int64, id: String, range: Range<Int64>) {
        let live = range.filter { spool[targetID]!.left[$0] == nil }
        spool[targetID]!.batches[id] = OpenBatch(range: range, live: live.count, bad: 0)
        registered[id] = (live.count, 0, 0)
    }

    /// The daemon restarts: every worker's step in progress is lost; the machine is rebuilt from the spool.
    func restart() {
        restarts += 1
        for case (let targetID, let seqs)? in awaitingRecord {
            for seq in seqs { unconfirmed[targetID, default: [:]][seq, default: 0] += 1 }
        }
        awaitingRecord = Array(repeating: nil, count: workers.count)
        workers = Array(repeating: nil, count: workers.count)
        for target in spool.values {
            for batchID in target.batches.keys { registered[batchID]?.restarts += 1 }
        }
        let restored = targetRows().map { row in
            let target = spool[row.id]!
            let ends = target.batches.values.map(\.range.upperBound) + [(target.left.keys.max() ?? -1) + 1]
            let batches = target.batches.map { id, batch in
                SpoolReader.BatchRow(
                    id: id, targetID: row.id, firstSeq: batch.range.lowerBound, endSeq: batch.range.upperBound,
                    attempts: batch.attempts, parts: batch.parts)
            }
            return DeliveryMachine.Restored(row: row, assignedEnd: ends.max() ?? 0, batches: batches)
        }
        machine = DeliveryMachine(restoring: restored, settings: settings, seed: seed &+ UInt64(restarts), now: now)
    }

    /// Applies a change as the real ledger does, checking the rules it relies on.
    private func apply(_ change: DeliveryLedger.Change) {
        let id = change.targetID
        guard var target = spool[id] else { return violation("a change for unknown target \(id)") }
        func leave(_ seq: Int64, _ how: Leave) {
            if let earlier = target.left[seq] { violation("seq \(seq) of target \(id) left twice (\(earlier), then \(how))") }
            target.left[seq] = how
        }
        if let batch = change.register {
            if target.batches[batch.id] != nil { violation("batch \(batch.id) registered twice") }
            let superseded = Set(change.superseded)
            let live = batch.range.filter { target.left[$0] == nil && !superseded.contains($0) }
            let bad = live.filter { target.rows[Int($0)].bad }.count
            target.batches[batch.id] = OpenBatch(range: batch.range, live: live.count, bad: bad)
            registered[batch.id] = (live.count, bad, 0)
        }
        for seq in change.superseded {
            let key = target.rows[Int(seq)].key
            let later = target.rows.indices.contains { Int64($0) > seq && target.rows[$0].key == key && target.left[Int64($0)] == nil }
            if key == nil || !later { violation("seq \(seq) of target \(id) superseded without a later queued write of its key") }
            leave(seq, .superseded)
        }
        for seq in change.delivered {
            if target.rows[Int(seq)].bad { violation("bad row \(seq) of target \(id) recorded as delivered") }
            leave(seq, .delivered)
        }
        for letter in change.deadLetters {
            deadLetters.append(DeadLetter(targetID: id, seqs: letter.seqs, failure: letter.failure))
            for seq in letter.seqs {
                // A partial entry holds rows the API wrote: they leave as dead letters, written once.
                leave(seq, .deadLettered)
            }
        }
        if let progress = change.progress { target.batches[progress.batchID]?.parts = progress.parts }
        if let attempt = change.attempt { target.batches[attempt.batchID]?.attempts += 1 }
        if let batch = change.finished {
            for seq in batch.range where target.left[seq] == nil {
                violation("batch \(batch.id) finished with row \(seq) of target \(id) still queued (it would be lost)")
                target.left[seq] = .delivered
            }
            target.batches[batch.id] = nil
        }
        if let state = change.state { target.state = state }
        if let error = change.lastError { target.lastError = error }
        spool[id] = target
    }

    private func read(
        _ targetID: Int64, from: Int64, end: Int64, maxRows: Int, maxBytes: Int, keys: Bool
    ) -> DeliveryMachine.ReadResult {
        let target = spool[targetID]!
        var result = DeliveryMachine.ReadResult(seqs: [], next: from)
        var keyBytes: [ArraySlice<UInt8>?] = []
        var seq = from
        while seq < min(end, Int64(target.rows.count)) {
            defer { seq += 1 }
            if target.left[seq] != nil {
                result.next = seq + 1
                continue
            }
            if result.seqs.count >= maxRows { break }
            let size = target.rows[Int(seq)].size
            if !result.seqs.isEmpty, result.bytes + size > maxBytes { break }
            result.bytes += size
            result.seqs.append(seq)
            keyBytes.append(target.rows[Int(seq)].key.map { Array($0.utf8)[...] })
            result.next = seq + 1
        }
        if keys { result.keys = keyBytes }
        result.oldestAppendedAt = result.seqs.first.map { target.rows[Int($0)].appendedAt }
        return result
    }

    // MARK: The API's side

    private func answer(_ send: DeliveryMachine.Send) -> (DeliveryMachine.Outcome, wrote: [Int64]) {
        let target = spool[send.targetID]!
        var request = Request(targetID: send.targetID, batchID: send.batchID, seqs: send.seqs, status: nil, patience: send.patience)
        defer { requests.append(request) }
        func roll(_ rate: Double) -> Bool { rate > 0 && Double.random(in: 0..<1, using: &random) < rate }
        func respond(_ status: Int, rejected: Int = 0, errors: [String] = []) -> DeliveryMachine.Outcome {
            request.status = status
            let body =
                #"{"request_id":"req_\#(requests.count)","rejected_rows":\#(rejected),"errors":[\#(errors.map { "\"\($0)\"" }.joined(separator: ","))]}"#
            return .answered(
                status: status, answer: StreamAPIResponse(body: Array(body.utf8)),
                retryAfter: status == 429 ? api.retryAfter : nil)
        }
        if api.notStreamAPIAnswers > 0 {
            api.notStreamAPIAnswers -= 1
            request.status = 200
            let page = StreamAPIResponse(body: Array("<html><body>Welcome to nginx!</body></html>".utf8))
            return (.answered(status: 200, answer: page, retryAfter: nil), [])
        }
        if let forced = api.forced.first {
            api.forced.removeFirst()
            guard let status = forced else { return (.noAnswer("timeout"), []) }
            if status != 200 { return (respond(status), []) }
        } else {
            if roll(api.noAnswerRate) { return (.noAnswer("connection reset"), []) }
            if api.refusesKey { return (respond(401), []) }
            if roll(api.serverErrorRate) { return (respond(Bool.random(using: &random) ? 500 : 503), []) }
            if roll(api.rateLimitRate) { return (respond(429), []) }
            if api.missingTables.contains(send.targetID) { return (respond(404), []) }
        }
        if send.seqs.count > api.maxRows { return (respond(413), []) }
        if target.target.mode == .merge {
            let keys = send.seqs.compactMap { target.rows[Int($0)].key }
            if Set(keys).count < keys.count { violation("a merge request of batch \(send.batchID) holds a key twice") }
        }
        let bad = send.seqs.indices.filter { target.rows[Int(send.seqs[$0])].bad }
        let errors = bad.map { api.namesRows ? "row \($0): refused" : "refused" }
        if !bad.isEmpty, api.refusal == .wholeRequest {
            return (
                respond(400, errors: api.namesRows ? ["row \(bad[0]): refused; request rejected"] : ["a row is refused; request rejected"]),
                []
            )
        }
        let written = send.seqs.enumerated().filter { !bad.contains($0.offset) }.map(\.element)
        for seq in written {
            lake[send.targetID, default: [:]][seq, default: 0] += 1
            if target.target.mode == .merge, let key = target.rows[Int(seq)].key {
                if let last = lastWrittenSeq[send.targetID]?[key], last > seq {
                    violation("merge target \(send.targetID): key \(key) written at seq \(seq) after seq \(last)")
                }
                lastWrittenSeq[send.targetID, default: [:]][key] = max(seq, lastWrittenSeq[send.targetID]?[key] ?? seq)
            }
        }
        if roll(api.dropAfterCommitRate) {
            for seq in written { unconfirmed[send.targetID, default: [:]][seq, default: 0] += 1 }
            return (.noAnswer("connection dropped after the commit"), [])
        }
        if api.slowness > send.patience {
            for seq in written { unconfirmed[send.targetID, default: [:]][seq, default: 0] += 1 }
            return (.noAnswer("Timeout was reached", timedOut: true), [])
        }
        return (respond(200, rejected: bad.count, errors: errors), written)
    }

    // MARK: Workers

    /// Lets worker `index` act once. Returns whether it did anything.
    @discardableResult
    func act(_ index: Int) -> Bool {
        guard let step = workers[index] else {
            guard let step = machine.nextStep(now: now, hasKey: hasKey) else { return false }
            workers[index] = step
            checkInFlight()
            return true
        }
        var outcome: DeliveryMachine.Outcome
        switch step {
        case .cut(let cut):
            outcome = .read(
                read(
                    cut.targetID, from: cut.from, end: cut.end, maxRows: cut.maxRows, maxBytes: cut.maxBytes,
                    keys: cut.target.mode == .merge))
        case .load(let load):
            outcome = .read(
                read(
                    load.targetID, from: load.batch.range.lowerBound, end: load.batch.range.upperBound, maxRows: .max,
                    maxBytes: .max, keys: load.target.mode == .merge))
        case .register where failingRegistrations > 0:
            failingRegistrations -= 1
            outcome = .notRecorded("disk full")
        case .register(let record), .record(let record):
            apply(record.change)
            awaitingRecord[index] = nil
            outcome = .recorded
        case .send(let send):
            let (answer, wrote) = hasKey ? self.answer(send) : (.missingKey, [])
            outcome = answer
            awaitingRecord[index] = wrote.isEmpty ? nil : (send.targetID, wrote)
        }
        workers[index] = machine.complete(step, with: outcome, now: now)
        checkInFlight()
        return true
    }

    /// Whether any worker holds a step.
    var isBusy: Bool { workers.contains { $0 != nil } }

    /// Whether worker `index` is about to write to the spool.
    func isRecording(_ index: Int) -> Bool {
        switch workers[index] {
        case .register?, .record?: true
        default: false
        }
    }

    /// Moves the clock on; to the machine's next wake-up when `idle` and nothing would happen otherwise.
    func advance(by duration: Duration) {
        now = now + duration
    }

    /// Lets the clock jump to the next moment something becomes due, if anything waits.
    @discardableResult
    func advanceToNextWakeUp() -> Bool {
        guard let wake = machine.nextWakeUp(after: now) else { return false }
        advance(by: wake - now.instant)
        return true
    }

    /// Workers take turns until nothing is left to do (or `limit` actions). Deterministic.
    @discardableResult
    func runUntilQuiet(limit: Int = 100_000) -> Int {
        var actions = 0
        while actions < limit {
            var acted = false
            for index in workers.indices where act(index) {
                acted = true
                actions += 1
            }
            if !acted, !advanceToNextWakeUp() { break }
        }
        return actions
    }

    /// Steps held per target must stay within the machine's promises: one batch for merge, the
    /// configured concurrency for append.
    private func checkInFlight() {
        var held: [Int64: Set<String>] = [:]
        for case let step? in workers {
            switch step {
            case .cut(let cut): held[cut.targetID, default: []].insert("cut")
            case .load(let load): held[load.targetID, default: []].insert(load.batch.id)
            case .send(let send): held[send.targetID, default: []].insert(send.batchID)
            case .register(let record), .record(let record):
                if let batchID = record.batchID { held[record.change.targetID, default: []].insert(batchID) }
            }
        }
        for (id, batches) in held {
            let limit = spool[id]!.target.mode == .merge ? 1 : settings.appendConcurrency
            if batches.count > limit { violation("target \(id) has \(batches.count) batches in flight (limit \(limit))") }
        }
    }

    // MARK: Checks

    /// Prints the spool, the last requests and the workers, to see where a schedule ended.
    func dump() {
        print("settings", settings.maxRows, settings.appendConcurrency, "api", api)
        for (id, t) in spool.sorted(by: { $0.key < $1.key }) {
            print("target", id, t.target, "rows", t.rows.count, "left", t.left.count, "batches", t.batches, "state", t.state)
        }
        for r in requests.suffix(30) { print("req", r.targetID, r.batchID, r.seqs, r.status as Any) }
        print("workers", workers)
        print("machine", machine)
        print("next step", machine.nextStep(now: now, hasKey: true) as Any)
    }

    private func violation(_ text: String) {
        violations.append(text)
    }

    /// Rows still queued, over all targets.
    var queued: Int {
        spool.values.reduce(0) { $0 + $1.rows.count - $1.left.count }
    }

    /// Checks the outcome once everything drained: every row left the queue the way its kind allows, and
    /// the requests for refused rows stayed within the isolation bound.
    func checkDrained() -> [String] {
        var problems = violations
        for (id, target) in spool.sorted(by: { $0.key < $1.key }) {
            if !target.batches.isEmpty { problems.append("target \(id): \(target.batches.count) batches still open") }
            let dead = deadLetters.filter { $0.targetID == id }
            var deadCount: [Int64: Int] = [:]
            for letter in dead { for seq in letter.seqs { deadCount[seq, default: 0] += 1 } }
            for seq in 0..<Int64(target.rows.count) {
                let row = target.rows[Int(seq)]
                let writes = lake[id]?[seq] ?? 0
                let allowed = 1 + (unconfirmed[id]?[seq] ?? 0)
                switch target.left[seq] {
                case nil:
                    problems.append("target \(id) seq \(seq): still queued")
                case .superseded:
                    if writes > 0 { problems.append("target \(id) seq \(seq): superseded but written") }
                    // Only a write that was written replaces it: a superseding write the API rejected would
                    // leave neither value.
                    let replaced = target.rows.indices.contains { later in
                        later > Int(seq) && target.rows[later].key == row.key && target.left[Int64(later)] == .delivered
                    }
                    if !replaced { problems.append("target \(id) seq \(seq): superseded, but no later write of its key was delivered") }
                case .delivered:
                    if row.bad { problems.append("target \(id) seq \(seq): bad row delivered") }
                    if writes == 0 { problems.append("target \(id) seq \(seq): recorded as delivered, never written") }
                case .deadLettered:
                    if deadCount[seq] != 1 { problems.append("target \(id) seq \(seq): dead-lettered \(deadCount[seq] ?? 0) times") }
                    if row.bad, writes > 0 { problems.append("target \(id) seq \(seq): bad row written") }
                    // A good row is dead-lettered only with its request (partial, 422, 413) or as expired, never
                    // as refused itself.
                    // Or as an earlier write of a merge key, with the later write of it that the API refused.
                    let excused = dead.contains { letter in
                        letter.seqs.contains(seq)
                            && (letter.failure.partial || [nil, 413, 422].contains(letter.failure.status)
                                || (row.key != nil && letter.seqs.contains { $0 > seq && target.rows[Int($0)].key == row.key }))
                    }
                    if !row.bad, !excused { problems.append("target \(id) seq \(seq): good row dead-lettered as refused") }
                }
                // Upserts are idempotent (and searching a merge batch re-sends good rows); appends are not.
                if target.target.mode == .append, writes > allowed {
                    problems.append("target \(id) seq \(seq): written \(writes) times, \(allowed - 1) explained")
                }
            }
        }
        return problems
    }

    /// Answered requests (not transient) per batch, with the batch's size and refused rows at registration.
    func isolationCosts() -> [(batchID: String, answered: Int, live: Int, bad: Int, restarts: Int)] {
        var costs: [String: Int] = [:]
        for request in requests where [200, 400, 413, 422].contains(request.status ?? 0) {
            costs[request.batchID, default: 0] += 1
        }
        return costs.keys.sorted().compactMap { id in
            guard let batch = registered[id] else { return nil }
            return (id, costs[id]!, batch.live, batch.bad, batch.restarts)
        }
    }

}

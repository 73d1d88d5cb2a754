import Core
import FoundationEssentials
import Glibc
import Spool

/// Every decision of delivery, apart from the I/O that carries it out: which batch a worker takes next,
/// when a batch is cut, what an answer means for its rows, when a target waits and for how long.
///
/// Pure: no I/O, no locks, no clock reads, no threads. The caller passes the time (``Now``) and what its
/// I/O returned (``Outcome``); the machine answers with the next ``Step`` for that worker. Randomness
/// (backoff jitter, batch ids) comes from a seeded generator, so a run is reproducible from its seed.
///
/// Guarantees (``DeliveryScheduler`` relies on them; the unit and model tests check them):
/// - A merge target has at most one batch in flight, and an open batch goes before any new one, so upserts
///   reach the API in spool order. Within a merge batch only the last write of each key is sent; the
///   earlier ones leave the queue when the batch is registered.
/// - An append target has at most ``Settings/appendConcurrency`` batches in flight.
/// - A transient failure (429, 5xx, no answer) makes its batch wait (`Retry-After`, else exponential
///   backoff with full jitter) and then repeats the same request; other batches and targets keep flowing,
///   but no new batch is cut for a target while one of its batches waits (so an outage does not pile up
///   batches). A 404 holds its table only; a refused or missing API key pauses every table. No row is
///   given up on for a transient failure; rows older than `retry.max_age` are dead-lettered as expired.
/// - Rows leave only through a ``DeliveryLedger/Change`` in a ``Step/register(_:)`` or ``Step/record(_:)``
///   step. Those the API confirmed are recorded before anything else happens to their batch.
/// - Isolating refused rows keeps its progress (``BatchIsolation``) across transient failures and, through
///   the parts recorded in the spool, across restarts.
struct DeliveryMachine {
    // MARK: Vocabulary

    /// The settings decisions depend on; replaced on reload.
    struct Settings: Sendable {
        var maxRows: Int
        /// Stored bytes of a batch's rows: `[batch] max_bytes` less room for the envelope and the tags.
        var maxBytes: Int
        /// Bytes of tags a batch may carry (``RequestBody/tagBudget(_:maxBytes:)``).
        var maxTagBytes: Int
        var linger: Duration
        /// How long a target's log must stand still before the rest of a burst goes without waiting out
        /// linger: a tenth of linger, at most 100 ms (``DeliveryMachine/burstEnded(_:now:)``).
        var quiet: Duration
        var appendConcurrency: Int
        var retry: RetryPolicy
        var maxAge: HumanDuration
        /// NDJSON bodies carry their config and tags in the URL: a URL too long (414) is about the rows' tags.
        var tagsInURL: Bool

        init(_ configuration: AgentConfiguration) {
            maxRows = configuration.batch.maxRows
            maxTagBytes = RequestBody.tagBudget(configuration.batch.format, maxBytes: configuration.batch.maxBytes.bytes)
            maxBytes = max(1, configuration.batch.maxBytes.bytes - RequestBody.envelopeAllowance - maxTagBytes)
            linger = configuration.batch.linger.duration
            quiet = min(linger / 10, .milliseconds(100))
            appendConcurrency = max(1, configuration.batch.concurrency)
            retry = RetryPolicy(configuration.retry)
            maxAge = configuration.retry.maxAge
            tagsInURL = configuration.batch.format == .ndjson
        }
    }

    /// The time, as the caller read it: monotonic for waiting, wall-clock for what is recorded.
    struct Now: Sendable {
        var instant: ContinuousClock.Instant
        var date: Date

        static func + (now: Now, duration: Duration) -> Now {
            Now(instant: now.instant + duration, date: now.date.addingTimeInterval(duration.seconds))
        }
    }

    /// One piece of I/O for a worker.
    enum Step: Sendable, Equatable {
        /// Read a new batch: the target's rows from `from`, before `end`, within the size limits.
        case cut(Cut)
        /// Read an open batch back (after a wait, or after a restart).
        case load(Load)
        /// Register the batch just cut (its change also removes the rows a later write supersedes).
        case register(Record)
        /// Record the outcome of a step in the spool. Rows the API confirmed are in it: keep trying until
        /// it is written (or the daemon stops).
        case record(Record)
        /// Send these rows of the batch to the API.
        case send(Send)
    }

    struct Cut: Sendable, Equatable {
        var targetID: Int64
        var target: SpoolTarget
        var from: Int64
        var end: Int64
        var maxRows: Int
        var maxBytes: Int
        var maxTagBytes: Int
    }

    struct Load: Sendable, Equatable {
        var targetID: Int64
        var target: SpoolTarget
        var batch: DeliveryLedger.Batch
    }

    struct Record: Sendable, Equatable {
        var change: DeliveryLedger.Change
        /// The batch the change is about, if any.
        var batchID: String?
    }

    struct Send: Sendable, Equatable {
        var targetID: Int64
        var target: SpoolTarget
        var batchID: String
        var seqs: [Int64]
        /// How many times `[api] timeout` the request waits for its answer: doubled after each timeout of
        /// the batch in a row, up to ``DeliveryMachine/maxPatience`` (see ``OpenBatch/timeouts``).
        var patience = 1
    }

    /// The most times `[api] timeout` a request waits for its answer after timeouts in a row (30 s: 4 min).
    static let maxPatience = 8

    /// What the I/O of a step returned.
    enum Outcome: Sendable {
        /// `cut` or `load`: the rows read.
        case read(ReadResult)
        case readFailed(String)
        /// `send`: the API's answer.
        case answered(status: Int, answer: StreamAPIResponse, retryAfter: Double?)
        /// `send`: no answer (connection refused, timeout, dropped, the body could not be built); `timedOut`
        /// when the wait for it ran out (the API may have written the rows all the same).
        case noAnswer(String, timedOut: Bool = false)
        /// `send`: the API key went away before the request.
        case missingKey
        /// `register` or `record`: committed.
        case recorded
        /// `register` or `record`: not committed (for a `record`, only when the daemon is stopping).
        case notRecorded(String)
    }

    /// Rows read for a batch.
    struct ReadResult: Sendable {
        /// Seqs of the rows read, ascending (rows already out of the queue are skipped).
        var seqs: [Int64]
        /// For a cut: the seq after the last one read (where the batch ends).
        var next: Int64
        /// For a merge cut: each row's primary key value (its raw JSON), `nil` where it has none.
        var keys: [ArraySlice<UInt8>?] = []
        /// Wall-clock time the oldest row was spooled, if known.
        var oldestAppendedAt: Double?
        /// Stored bytes of the rows read (each with its newline), as ``LogEnd/bytes`` counts them.
        var bytes = 0
    }

    /// Where a target's log ends now, and from where this is news (`start`: the first seq of an append,
    /// or the delivery position when read from the spool).
    struct LogEnd: Sendable, Equatable {
        var targetID: Int64
        var target: SpoolTarget
        var start: Int64
        var end: Int64
        /// Stored bytes of the rows `start..<end`, when known (an append says; the spool's row does not).
        var bytes: Int?
    }

    /// A target as the spool holds it at start.
    struct Restored: Sendable {
        var row: SpoolReader.TargetRow
        /// Where new batches start: past every open batch and delivered range.
        var assignedEnd: Int64
        var batches: [SpoolReader.BatchRow]
    }

    // MARK: State

    private enum Holder: Equatable {
        case free
        case loading
        case working(Held)
    }

    /// A batch a worker is working on.
    private struct Held: Equatable {
        var isolation: BatchIsolation
        var oldestAppendedAt: Double?
        /// Merge: for a row sent, the earlier writes of its key in the batch, which are not sent. They leave
        /// the queue with it: superseded once it is written, in its dead letter if it is not (the earlier
        /// values would otherwise be lost with nothing written in their place).
        var supersededBy: [Int64: [Int64]] = [:]
        var inFlight: BatchIsolation.Request?
        /// After the record step in progress: give the batch up (it waits) rather than go on.
        var releaseAfterRecord = false
        /// The record step in progress closes the batch. It stays until that is committed, so a merge
        /// target's next batch cannot overtake it (a batch not recorded as resolved is sent again).
        var finishing = false
    }

    /// A registered batch not yet resolved.
    private struct OpenBatch {
        let id: String
        let range: Range<Int64>
        var attempts: Int
        var firstFailedAt: Date?
        /// After a transient failure: not sent again before this.
        var notBefore: ContinuousClock.Instant?
        /// Consecutive transient failures of the batch: the backoff exponent.
        var failures = 0
        /// The batch was sent since the daemon started (answered or not; a missing key is no attempt).
        var tried = false
        /// Its requests' waits for an answer that ran out, in a row. An API slower than `[api] timeout`
        /// writes each attempt all the same: a fixed wait re-sent (and wrote) the batch after every backoff,
        /// 50 copies of it in 15 s at a 2 s timeout. Each timeout doubles the next wait instead.
        var timeouts = 0
        /// The parts as the spool has them (empty: one whole part).
        var recordedParts: [DeliveryLedger.Part]
        var holder: Holder = .free
        /// Stored bytes of the rows, as the cut read them (0 for a batch restored from the spool): they
        /// wait again if the batch cannot be registered.
        var cutBytes = 0

        var ledgerBatch: DeliveryLedger.Batch { DeliveryLedger.Batch(id: id, range: range) }
    }

    private struct TargetProgress {
        let id: Int64
        let target: SpoolTarget
        /// The end of the target's log (`next_seq`).
        var logEnd: Int64
        /// Where the next batch starts.
        var assignedEnd: Int64
        var pendingSince: ContinuousClock.Instant?
        /// When the log last grew (rows appended since the machine last saw it).
        var grewAt: ContinuousClock.Instant?
        /// When a batch was last cut full (a limit stopped it before the rows waiting ran out).
        var fullCutAt: ContinuousClock.Instant?
        /// Stored bytes known to wait past `assignedEnd`: rows whose append said how big they were. Rows
        /// seen only in the spool's row count for nothing, so this never overstates what waits.
        var waitingBytes = 0
        var flushThrough: Int64 = 0
        /// Registered batches, in seq order.
        var batches: [OpenBatch] = []
        var cutting = false
        var missingKeyNoted = false
        /// What the API's refusals taught about the target; kept while it is idle (``RefusalMemory``).
        var refusals = RefusalMemory()

        /// ``RefusalMemory/pausedUntil``.
        var pausedUntil: ContinuousClock.Instant? {
            get { refusals.pausedUntil }
            set { refusals.pausedUntil = newValue }
        }
        /// ``RefusalMemory/failures``.
        var failures: Int {
            get { refusals.failures }
            set { refusals.failures = newValue }
        }

        var inFlight: Int { batches.count { $0.holder != .free } + (cutting ? 1 : 0) }
        var hasWork: Bool { logEnd > assignedEnd || !batches.isEmpty }
    }

    /// What the API's refusals taught about a target, which outlives its batches and its idle spells: a
    /// table written to a few rows at a time (each batch resolved, the target idle, between two) was never
    /// held, and every row of a schema change, or every request of a refused tag, went to the dead letters
    /// while `status --check` said ok.
    private struct RefusalMemory {
        /// The reason of the last 422 the API gave a request of this target, until a request is written.
        var invalidFor: String?
        /// Rows the API refused alone one after the other (across batches), with nothing of the target
        /// written between, and the reason it gave the last time (``DeliveryMachine/refusedAloneBeforeHolding``).
        var refusedAlone = 0
        var refusedAloneFor: String?
        /// A hold (404, a repeated 422, rows refused alone) or a pause after a storage failure.
        var pausedUntil: ContinuousClock.Instant?
        /// Consecutive holds (404, refused key): the exponent of the wait.
        var failures = 0

        /// Nothing to remember: a target coming back starts as a new one would.
        var isEmpty: Bool { invalidFor == nil && refusedAlone == 0 && pausedUntil == nil && failures == 0 }
    }

    private(set) var settings: Settings
    private var targets: [Int64: TargetProgress] = [:]
    /// The ``RefusalMemory`` of targets dropped while idle, and since when, given back when they return
    /// within `retry.max_age` (a refusal older than that says little about the table now).
    private var droppedRefusals: [Int64: (memory: RefusalMemory, since: ContinuousClock.Instant)] = [:]
    /// Where each dropped target's rows were all resolved (its `assignedEnd` when it went idle): where it
    /// starts again when it comes back. Rows another process appended meanwhile (`dlq replay`) lie between
    /// this and the append that brings the target back.
    private var droppedAt: [Int64: Int64] = [:]
    private var order: [Int64] = []
    private var cursor = 0
    private var authPausedUntil: ContinuousClock.Instant?
    private var stopping = false
    private var flushRequested = false
    private var random: SplitMix64

    /// How long a target waits after a spool read or registration failed.
    static let storagePause = Duration.seconds(1)

    init(restoring restored: [Restored], settings: Settings, seed: UInt64, now: Now) {
        self.settings = settings
        self.random = SplitMix64(seed: seed)
        for entry in restored {
            var target = TargetProgress(
                id: entry.row.id, target: entry.row.target, logEnd: entry.row.nextSeq,
                assignedEnd: max(entry.row.deliveredSeq, entry.assignedEnd))
            target.batches = entry.batches.sorted { $0.firstSeq < $1.firstSeq }.map {
                OpenBatch(id: $0.id, range: $0.firstSeq..<$0.endSeq, attempts: $0.attempts, recordedParts: $0.parts)
            }
            // Rows left by a previous run have waited long enough.
            if target.logEnd > target.assignedEnd { target.pendingSince = now.instant - settings.linger }
            targets[target.id] = target
            order.append(target.id)
        }
    }

    /// Batches resumed from the spool at start.
    var openBatchCount: Int { targets.values.reduce(0) { $0 + $1.batches.count } }

    // MARK: Inputs

    /// Takes in the targets' log ends (new rows, new targets). A target dropped while idle starts again
    /// where its rows were all resolved, so rows another process appended meanwhile are sent even when an
    /// append of this daemon's intake is what brings it back; a new target starts at `start`.
    mutating func observe(_ ends: [LogEnd], now: Now) {
        for end in ends {
            if targets[end.targetID] == nil {
                let start = droppedAt[end.targetID] ?? end.start
                guard end.end > start else { continue }
                droppedAt[end.targetID] = nil
                var target = TargetProgress(id: end.targetID, target: end.target, logEnd: start, assignedEnd: start)
                if let dropped = droppedRefusals.removeValue(forKey: end.targetID), now.instant - dropped.since < settings.maxAge.duration {
                    target.refusals = dropped.memory
                }
                targets[end.targetID] = target
                order.append(end.targetID)
            }
            let flush = flushRequested
            update(end.targetID) { target in
                // An append's bytes count only when all of its rows are news (not seen in the spool's row).
                if let bytes = end.bytes, end.start >= target.logEnd {
                    target.waitingBytes += bytes
                }
                if end.end > target.logEnd { target.grewAt = now.instant }
                target.logEnd = max(target.logEnd, end.end)
                if target.logEnd > target.assignedEnd, target.pendingSince == nil { target.pendingSince = now.instant }
                if flush { target.flushThrough = target.logEnd }
            }
        }
        flushRequested = false
    }

    /// ``observe(_:now:)`` for rows read from the spool's `targets` table.
    mutating func observe(_ rows: [SpoolReader.TargetRow], now: Now) {
        observe(rows.map { LogEnd(targetID: $0.id, target: $0.target, start: $0.deliveredSeq, end: $0.nextSeq) }, now: now)
    }

    /// The table of a target the machine knows.
    func table(of targetID: Int64) -> String? { targets[targetID]?.target.table }

    /// Targets the machine keeps: those with rows to cut, open batches, or work in progress. An idle target
    /// is dropped, so that the cost of a decision follows the work, not every table and tag set ever seen.
    var targetCount: Int { targets.count }

    mutating func reconfigure(_ settings: Settings) {
        self.settings = settings
    }

    /// Everything pending becomes due now: linger, backoff, holds and the auth pause are waived once
    /// (SIGUSR1, SIGHUP). Rows the next ``observe(_:now:)`` brings in are included. Returns the idle targets
    /// whose hold it ended: the spool still says they are held, and the caller records them idle.
    @discardableResult
    mutating func flushNow() -> [Int64] {
        flushRequested = true
        for id in order {
            update(id) { target in
                target.flushThrough = target.logEnd
                target.pausedUntil = nil
                for index in target.batches.indices { target.batches[index].notBefore = nil }
            }
        }
        // Idle targets' holds too: their next rows go at once (the operator fixed the table, say).
        var released: [Int64] = []
        for id in Array(droppedRefusals.keys) where droppedRefusals[id]?.memory.pausedUntil != nil {
            droppedRefusals[id]?.memory.pausedUntil = nil
            released.append(id)
            if droppedRefusals[id]?.memory.isEmpty == true { droppedRefusals[id] = nil }
        }
        authPausedUntil = nil
        return released.sorted()
    }

    /// No new step starts; a step that returns still gets its outcome recorded.
    mutating func stop() {
        stopping = true
    }

    // MARK: Steps

    /// Work for an idle worker, if any is due.
    mutating func nextStep(now: Now, hasKey: Bool) -> Step? {
        guard !stopping else { return nil }
        guard hasKey else { return noteMissingKey() }
        if let until = authPausedUntil {
            guard now.instant >= until else { return nil }
            authPausedUntil = nil
        }
        var idle: [Int64] = []
        defer { drop(idle, now: now) }
        for step in 0..<order.count {
            let id = order[(cursor + step) % order.count]
            if let work = take(id, now: now) {
                cursor = (cursor + step + 1) % order.count
                return work
            }
            if let target = targets[id], !target.hasWork, target.inFlight == 0 { idle.append(id) }
        }
        return nil
    }

    /// Forgets targets with nothing to do; the writer's next append (or the spool) brings them back.
    private mutating func drop(_ idle: [Int64], now: Now) {
        guard !idle.isEmpty else { return }
        let gone = Set(idle)
        for id in idle {
            droppedAt[id] = targets[id]?.assignedEnd
            if var refusals = targets[id]?.refusals {
                // A hold already over is nothing to keep.
                if let until = refusals.pausedUntil, until <= now.instant { refusals.pausedUntil = nil }
                if !refusals.isEmpty { droppedRefusals[id] = (refusals, now.instant) }
            }
            targets[id] = nil
        }
        order.removeAll { gone.contains($0) }
        cursor = order.isEmpty ? 0 : cursor % order.count
    }

    /// When something next becomes due by itself (a backoff, a hold, linger), if anything waits for a time
    /// after `now`. What is due already but not taken waits for a worker, whose return wakes the caller.
    func nextWakeUp(after now: Now) -> ContinuousClock.Instant? {
        var earliest: ContinuousClock.Instant?
        func consider(_ instant: ContinuousClock.Instant?) {
            guard let instant, instant > now.instant else { return }
            earliest = min(earliest ?? instant, instant)
        }
        consider(authPausedUntil)
        for target in targets.values where target.hasWork {
            consider(target.pausedUntil)
            for batch in target.batches where batch.holder == .free { consider(batch.notBefore) }
            if target.logEnd > target.assignedEnd {
                consider(target.pendingSince.map { $0 + settings.linger })
                if isBurst(target, now: now) { consider(target.grewAt.map { $0 + settings.quiet }) }
            }
        }
        return earliest
    }

    /// Takes what a step's I/O returned; returns the same worker's next step, or `nil` when it is free.
    mutating func complete(_ step: Step, with outcome: Outcome, now: Now) -> Step? {
        switch step {
        case .cut(let cut): completeCut(cut, outcome, now: now)
        case .load(let load): completeLoad(load, outcome, now: now)
        case .register(let record): completeRecord(record, outcome, registration: true, now: now)
        case .record(let record): completeRecord(record, outcome, registration: false, now: now)
        case .send(let send): completeSend(send, outcome, now: now)
        }
    }

    // MARK: Choosing

    private mutating func take(_ id: Int64, now: Now) -> Step? {
        guard var target = targets[id] else { return nil }
        defer { targets[id] = target }
        if let until = target.pausedUntil {
            guard now.instant >= until else { return nil }
            target.pausedUntil = nil
        }
        let limit = target.target.mode == .merge ? 1 : settings.appendConcurrency
        guard target.inFlight < limit else { return nil }
        // Open batches first, in seq order (for merge the limit of one makes this the oldest, and nothing
        // else goes while it waits).
        for index in target.batches.indices where target.batches[index].holder == .free {
            if let notBefore = target.batches[index].notBefore, now.instant < notBefore {
                if target.target.mode == .merge { return nil }
                continue
            }
            target.batches[index].notBefore = nil
            target.batches[index].holder = .loading
            return .load(Load(targetID: id, target: target.target, batch: target.batches[index].ledgerBatch))
        }
        // A new batch only while none waits for a retry.
        guard !target.batches.contains(where: { $0.holder == .free }), !target.cutting,
            target.batches.isEmpty || target.target.mode == .append
        else { return nil }
        let waiting = target.logEnd - target.assignedEnd
        guard waiting > 0 else { return nil }
        // A full batch goes at once, whichever limit fills it; a partial one waits for linger, or for the
        // end of the burst that brought it.
        let full = waiting >= Int64(settings.maxRows) || target.waitingBytes >= settings.maxBytes
        let lingered = target.pendingSince.map { now.instant - $0 >= settings.linger } ?? false
        guard full || lingered || burstEnded(target, now: now) || target.flushThrough > target.assignedEnd else { return nil }
        target.cutting = true
        return .cut(
            Cut(
                targetID: id, target: target.target, from: target.assignedEnd, end: target.logEnd,
                maxRows: settings.maxRows, maxBytes: settings.maxBytes, maxTagBytes: settings.maxTagBytes))
    }

    /// Whether the rows waiting are part of a burst: they make at least a quarter of a full batch (by rows
    /// or by known bytes), or follow a batch cut full less than linger ago.
    private func isBurst(_ target: TargetProgress, now: Now) -> Bool {
        if let fullCutAt = target.fullCutAt, now.instant - fullCutAt < settings.linger { return true }
        return (target.logEnd - target.assignedEnd) * 4 >= Int64(settings.maxRows) || target.waitingBytes * 4 >= settings.maxBytes
    }

    /// A burst ended: its rows wait (``isBurst(_:now:)``) and the log has stood still for
    /// ``Settings/quiet``. The burst's requests already spread their cost over many rows, and waiting out
    /// linger would only delay the rest (a file loaded with `send`, a job's last records). A trickle never
    /// gets here: it fills neither a batch nor a quarter of one within linger.
    private func burstEnded(_ target: TargetProgress, now: Now) -> Bool {
        guard let grewAt = target.grewAt, now.instant - grewAt >= settings.quiet else { return false }
        return isBurst(target, now: now)
    }

    /// Without an API key nothing is sent; each target with rows waiting says why once, in the spool.
    private mutating func noteMissingKey() -> Step? {
        for id in order {
            guard let target = targets[id], !target.missingKeyNoted, target.inFlight == 0, target.hasWork else { continue }
            targets[id]?.missingKeyNoted = true
            var change = DeliveryLedger.Change(targetID: id)
            change.state = .authFailing(until: nil)
            change.lastError = Self.missingKeyError
            return .record(Record(change: change, batchID: nil))
        }
        return nil
    }

    static let missingKeyError = "no API key configured"

    // MARK: Completions

    private mutating func completeCut(_ cut: Cut, _ outcome: Outcome, now: Now) -> Step? {
        guard var target = targets[cut.targetID] else { return nil }
        defer { targets[cut.targetID] = target }
        guard case .read(let result) = outcome, result.next > cut.from else {
            target.cutting = false
            target.pausedUntil = now.instant + Self.storagePause
            return nil
        }
        guard !stopping, !result.seqs.isEmpty else {
            target.cutting = false
            if !stopping {
                target.assignedEnd = max(target.assignedEnd, result.next)
                if target.assignedEnd >= target.logEnd { target.waitingBytes = 0 }
            }
            return nil
        }
        // `cutting` stays set until the batch is registered: a later batch registered first would leave
        // these rows behind every recorded batch if the daemon stopped in between.
        if result.next < cut.end { target.fullCutAt = now.instant }
        target.assignedEnd = max(target.assignedEnd, result.next)
        target.waitingBytes = target.assignedEnd >= target.logEnd ? 0 : max(0, target.waitingBytes - result.bytes)
        if target.assignedEnd >= target.logEnd { target.pendingSince = nil }
        let batch = DeliveryLedger.Batch(id: makeBatchID(now.date), range: cut.from..<result.next)
        let (live, supersededBy) = Self.lastWrites(result)
        var open = OpenBatch(id: batch.id, range: batch.range, attempts: 0, recordedParts: [])
        open.cutBytes = result.bytes
        open.holder = .working(
            Held(
                isolation: BatchIsolation(range: batch.range, parts: [], live: live),
                oldestAppendedAt: result.oldestAppendedAt, supersededBy: supersededBy))
        target.batches.append(open)
        var change = DeliveryLedger.Change(targetID: cut.targetID)
        change.register = batch
        return .register(Record(change: change, batchID: batch.id))
    }

    private mutating func completeLoad(_ load: Load, _ outcome: Outcome, now: Now) -> Step? {
        guard let index = batchIndex(load.targetID, load.batch.id) else { return nil }
        guard case .read(let result) = outcome else {
            updateBatch(load.targetID, index) { $0.holder = .free }
            targets[load.targetID]?.pausedUntil = now.instant + Self.storagePause
            return nil
        }
        // The batch's earlier writes of a merge key are still queued until the write that supersedes them
        // is resolved (also in a batch registered by version 1 of the spool).
        let (live, supersededBy) = Self.lastWrites(result)
        updateBatch(load.targetID, index) { batch in
            batch.holder = .working(
                Held(
                    isolation: BatchIsolation(range: batch.range, parts: batch.recordedParts, live: live),
                    oldestAppendedAt: result.oldestAppendedAt, supersededBy: supersededBy))
        }
        return decide(load.targetID, index, now: now)
    }

    private mutating func completeRecord(_ record: Record, _ outcome: Outcome, registration: Bool, now: Now) -> Step? {
        let targetID = record.change.targetID
        if registration { update(targetID) { $0.cutting = false } }
        guard let batchID = record.batchID, let index = batchIndex(targetID, batchID),
            case .working(let held) = targets[targetID]?.batches[index].holder
        else { return nil }  // a note, or the batch was resolved by this record
        guard case .recorded = outcome else {
            if registration {
                // Not registered: forget the batch; its rows wait again (with their bytes, so a full batch
                // is not held for linger) and are cut again after a pause.
                update(targetID) { target in
                    target.waitingBytes += target.batches[index].cutBytes
                    target.batches.remove(at: index)
                    target.assignedEnd = min(target.assignedEnd, record.change.register?.range.lowerBound ?? target.assignedEnd)
                    if target.logEnd > target.assignedEnd, target.pendingSince == nil { target.pendingSince = now.instant }
                    target.pausedUntil = now.instant + Self.storagePause
                }
            } else {
                release(targetID, index)
            }
            return nil
        }
        if held.finishing {
            update(targetID) { $0.batches.remove(at: index) }
            return nil
        }
        if let progress = record.change.progress { updateBatch(targetID, index) { $0.recordedParts = progress.parts } }
        guard !held.releaseAfterRecord else {
            release(targetID, index)
            return nil
        }
        return decide(targetID, index, now: now)
    }

    private mutating func completeSend(_ send: Send, _ outcome: Outcome, now: Now) -> Step? {
        guard let index = batchIndex(send.targetID, send.batchID), var target = targets[send.targetID],
            case .working(var held) = target.batches[index].holder, let request = held.inFlight
        else { return nil }
        held.inFlight = nil
        target.batches[index].attempts += 1
        switch outcome {
        case .answered, .noAnswer: target.batches[index].tried = true
        default: break
        }
        let attempts = target.batches[index].attempts
        var change = DeliveryLedger.Change(targetID: send.targetID)

        func wait(_ state: TargetState, error: String, status: Int?) -> Step? {
            change.attempt = DeliveryLedger.Attempt(batchID: send.batchID, status: status, error: error)
            change.state = state
            change.lastError = error
            held.releaseAfterRecord = true
            target.batches[index].holder = .working(held)
            targets[send.targetID] = target
            return .record(Record(change: change, batchID: send.batchID))
        }

        let verdict: DeliveryVerdict
        let answer: StreamAPIResponse
        let status: Int?
        let error: String
        switch outcome {
        case .answered(let code, let body, let retryAfter):
            target.batches[index].timeouts = 0
            verdict = DeliveryVerdict(
                status: code, answer: body, retryAfter: retryAfter, sentRows: request.seqs.count, tagsInURL: settings.tagsInURL)
            (answer, status) = (body, code)
            error = Self.describe(status: code, answer: body, sentRows: request.seqs.count)
        case .noAnswer(let message, let timedOut):
            verdict = .transient(retryAfter: nil)
            (answer, status) = (StreamAPIResponse(body: []), nil)
            var said = message
            if timedOut {
                target.batches[index].timeouts += 1
                let next = Self.patience(afterTimeouts: target.batches[index].timeouts)
                if next > send.patience {
                    said +=
                        "; the next attempt waits \(next) times [api] timeout for its answer (the API may have written these rows: a slow answer is waited for rather than the rows sent again)"
                }
            }
            error = said
        case .missingKey:
            let until = now + settings.retry.delay(attempt: target.failures + 3, using: &random)
            target.failures += 1
            authPausedUntil = until.instant
            return wait(.authFailing(until: until.date), error: Self.missingKeyError, status: nil)
        case .read, .readFailed, .recorded, .notRecorded:
            release(send.targetID, index)
            return nil
        }
        switch verdict {
        case .transient(let retryAfter):
            // Retry-After lengthens the backoff, never shortens it: a "0" (or a date already past) once
            // meant no wait at all, every answer at once followed by the same request.
            let backoff = settings.retry.delay(attempt: target.batches[index].failures, using: &random)
            let delay = max(retryAfter ?? .zero, backoff)
            target.batches[index].failures += 1
            target.batches[index].notBefore = now.instant + delay
            return wait(.backingOff(until: (now + delay).date), error: error, status: status)
        case .authRefused:
            let until = now + settings.retry.delay(attempt: target.failures + 3, using: &random)
            target.failures += 1
            authPausedUntil = until.instant
            return wait(.authFailing(until: until.date), error: error, status: status)
        case .tableNotFound:
            let until = now + settings.retry.delay(attempt: target.failures + 3, using: &random)
            target.failures += 1
            target.pausedUntil = until.instant
            return wait(.heldTableNotFound(until: until.date), error: error, status: status)
        case .invalid where target.refusals.invalidFor == answer.summary:
            // The same 422 a second time: the API refuses this table's requests as such (a tag or key it
            // does not take), not these rows. Dead-lettering every batch would empty the table into the dead
            // letters at full speed; it waits instead, like a 404, and the operator hears why.
            let until = now + settings.retry.delay(attempt: target.failures + 3, using: &random)
            target.failures += 1
            target.pausedUntil = until.instant
            return wait(
                .heldRefusingRows(until: until.date),
                error:
                    "\(error); the API refused this table's requests twice in a row for this reason, so the table is held, the others keep flowing",
                status: status)
        case .delivered, .partlyRejected, .refused, .tooLarge, .invalid:
            target.failures = 0
            target.batches[index].failures = 0
            let effect = held.isolation.resolve(request, verdict: verdict, status: status ?? 0, answer: answer, mode: send.target.mode)
            if case .invalid = verdict {
                target.refusals.invalidFor = answer.summary
            } else if !effect.delivered.isEmpty {
                target.refusals.invalidFor = nil
            }
            if !effect.rejected.isEmpty {
                change.lastError = error
                if target.batches[index].firstFailedAt == nil { target.batches[index].firstFailedAt = now.date }
            }
            let hold = holdIfEveryRowIsRefused(
                &target.refusals, request: request, verdict: verdict, effect: effect, answer: answer, now: now)
            target.batches[index].holder = .working(held)
            targets[send.targetID] = target
            var step = record(
                effect, targetID: send.targetID, index: index, attempts: attempts,
                warnings: answer.warnings, status: status, error: error, into: change, now: now)
            // Held even when the batch ended with that row: the target's next rows wait (rows written a few
            // at a time come in batches of their own).
            if let hold {
                targets[send.targetID]?.pausedUntil = hold.instant
                step.change.state = .heldRefusingRows(until: hold.date)
                step.change.lastError =
                    "the API refused the last \(target.refusals.refusedAlone) rows each alone for the same reason (\(answer.summary)); holding the table, then trying the next row. A schema change? Fix the table or the writer; the refused rows are dead letters to replay"
            }
            return .record(step)
        }
    }

    /// How many times `[api] timeout` a request waits after `timeouts` timeouts of its batch in a row.
    static func patience(afterTimeouts timeouts: Int) -> Int { min(1 << min(timeouts, 8), maxPatience) }

    /// How many rows of a batch the API may refuse alone, one after the other and for the same reason,
    /// before the target is held. When every row is refused (a schema change), isolation costs two requests
    /// and a dead letter per row: for a 50,000-row batch, 100,000 requests and entries, and a merge table
    /// blocked meanwhile. Held, the target tries one more row after each wait (growing as backoff does).
    static let refusedAloneBeforeHolding = 8

    /// Counts a refusal of one row alone (or resets the count when rows were written) and returns until
    /// when the target is to be held, if it is to be.
    private mutating func holdIfEveryRowIsRefused(
        _ memory: inout RefusalMemory, request: BatchIsolation.Request, verdict: DeliveryVerdict, effect: BatchIsolation.Effect,
        answer: StreamAPIResponse, now: Now
    ) -> Now? {
        if !effect.delivered.isEmpty {
            (memory.refusedAlone, memory.refusedAloneFor) = (0, nil)
            return nil
        }
        guard case .refused = verdict, request.seqs.count == 1, !effect.rejected.isEmpty else { return nil }
        memory.refusedAlone = memory.refusedAloneFor == answer.summary ? memory.refusedAlone + 1 : 1
        memory.refusedAloneFor = answer.summary
        guard memory.refusedAlone >= Self.refusedAloneBeforeHolding else { return nil }
        return now + settings.retry.delay(attempt: memory.refusedAlone - Self.refusedAloneBeforeHolding + 3, using: &random)
    }

    /// An answer as `last_error` and the logs give it: the status and the API's errors, and for a 2xx that
    /// does not say what it wrote, why the rows go again.
    static func describe(status: Int, answer: StreamAPIResponse, sentRows: Int) -> String {
        var text = "HTTP \(status)"
        if (200..<300).contains(status), let unknown = answer.unknownWritten(of: sentRows) {
            text += " \(unknown), so what it wrote is unknown"
            if answer.rejectedRows == nil, answer.successfulRows == nil { text += ": not a Stream API answer (is [api] url right?)" }
            text += "; the rows go again after a backoff"
        }
        return answer.summary.isEmpty ? text : "\(text): \(answer.summary)"
    }

    // MARK: A held batch

    /// The next step for a batch a worker holds: send its next part, or finish it.
    private mutating func decide(_ targetID: Int64, _ index: Int, now: Now) -> Step? {
        guard let target = targets[targetID], case .working(var held) = target.batches[index].holder else { return nil }
        let paused = (target.pausedUntil.map { now.instant < $0 } ?? false) || authPausedUntil.map { now.instant < $0 } ?? false
        guard !stopping, !paused else {
            release(targetID, index)
            return nil
        }
        let batch = target.batches[index]
        // Rows expire for failing, not for waiting: a batch older than max_age goes once more (after a week
        // without an API key, or with the daemon stopped) and expires only if that fails too, as it does after
        // any failure since (a hold on a 404, a refused key, a repeated 422 included).
        if batch.tried, let appended = held.oldestAppendedAt, now.date.timeIntervalSince1970 - appended > settings.maxAge.seconds {
            let effect = held.isolation.expire(
                BatchIsolation.Refusal(
                    status: nil, reason: "expired: not delivered within retry.max_age (\(settings.maxAge))", errors: [], requestID: nil))
            updateBatch(targetID, index) { $0.holder = .working(held) }
            return .record(
                record(
                    effect, targetID: targetID, index: index, attempts: batch.attempts, warnings: [],
                    status: nil, error: nil, into: DeliveryLedger.Change(targetID: targetID), now: now))
        }
        switch held.isolation.next() {
        case .send(let request):
            held.inFlight = request
            updateBatch(targetID, index) { $0.holder = .working(held) }
            return .send(
                Send(
                    targetID: targetID, target: target.target, batchID: batch.id, seqs: request.seqs,
                    patience: Self.patience(afterTimeouts: batch.timeouts)))
        case .resolved:
            updateBatch(targetID, index) { $0.holder = .working(held) }
            return .record(
                record(
                    BatchIsolation.Effect(), targetID: targetID, index: index, attempts: batch.attempts,
                    warnings: [], status: nil, error: nil, into: DeliveryLedger.Change(targetID: targetID), now: now))
        }
    }

    /// The record of what `effect` resolved in batch `index`: rows delivered and dead-lettered, and either
    /// the parts left or, when none are, the batch finished (it leaves the machine once that is recorded).
    private mutating func record(
        _ effect: BatchIsolation.Effect, targetID: Int64, index: Int, attempts: Int, warnings: [String],
        status: Int?, error: String?, into change: DeliveryLedger.Change, now: Now
    ) -> Record {
        var change = change
        let batch = targets[targetID]!.batches[index]
        guard case .working(var held) = batch.holder else { return Record(change: change, batchID: batch.id) }
        change.delivered = effect.delivered
        change.superseded = effect.delivered.flatMap { held.supersededBy[$0] ?? [] }.sorted()
        change.deadLetters = effect.rejected.map { rejection in
            // The earlier writes of a rejected row's key go with it, in order: replaying the entry applies them
            // as they came, where dropping them would have lost every value of the key in the batch.
            let earlier = rejection.seqs.flatMap { held.supersededBy[$0] ?? [] }
            let reason =
                earlier.isEmpty
                ? rejection.refusal.reason
                : rejection.refusal.reason + " (with \(earlier.count) earlier writes of the same keys in the batch, which were not sent)"
            return DeliveryLedger.DeadLetter(
                seqs: (rejection.seqs + earlier).sorted(),
                failure: DeliveryLedger.Failure(
                    reason: reason, status: rejection.refusal.status, errors: rejection.refusal.errors,
                    warnings: warnings, requestID: rejection.refusal.requestID, attempts: attempts, partial: rejection.partial,
                    firstFailedAt: batch.firstFailedAt ?? now.date),
                writtenUnnamed: rejection.writtenUnnamed)
        }
        if !effect.delivered.isEmpty { change.succeededAt = now.date }
        if held.isolation.isResolved {
            change.finished = batch.ledgerBatch
            change.state = .delivering
            held.finishing = true
            updateBatch(targetID, index) { $0.holder = .working(held) }
        } else {
            let parts = held.isolation.parts == [DeliveryLedger.Part(range: batch.range, refusal: nil)] ? [] : held.isolation.parts
            if parts != batch.recordedParts { change.progress = DeliveryLedger.Progress(batchID: batch.id, parts: parts) }
            change.attempt = status.map { DeliveryLedger.Attempt(batchID: batch.id, status: $0, error: error ?? "HTTP \($0)") }
            change.state = held.isolation.isIsolating ? .isolating : .delivering
        }
        return Record(change: change, batchID: batch.id)
    }

    private mutating func release(_ targetID: Int64, _ index: Int) {
        updateBatch(targetID, index) { batch in
            if case .working(let held) = batch.holder, !held.isolation.isResolved {
                let parts = held.isolation.parts == [DeliveryLedger.Part(range: batch.range, refusal: nil)] ? [] : held.isolation.parts
                batch.recordedParts = parts
            }
            batch.holder = .free
        }
    }

    // MARK: Helpers

    private func batchIndex(_ targetID: Int64, _ batchID: String) -> Int? {
        targets[targetID]?.batches.firstIndex { $0.id == batchID }
    }

    private mutating func update(_ id: Int64, _ body: (inout TargetProgress) -> Void) {
        guard var target = targets[id] else { return }
        body(&target)
        targets[id] = target
    }

    private mutating func updateBatch(_ targetID: Int64, _ index: Int, _ body: (inout OpenBatch) -> Void) {
        update(targetID) { target in body(&target.batches[index]) }
    }

    /// A batch id unique across hosts and restarts: time, then randomness.
    private mutating func makeBatchID(_ date: Date) -> String {
        let millis = UInt64(max(0, date.timeIntervalSince1970 * 1000))
        return "b" + String(millis, radix: 36) + "-" + String(random.next() >> 14, radix: 36)
    }

    /// The rows of a read to send, and for each of them the earlier writes of its key that it supersedes
    /// (merge reads come with keys; other reads send every row).
    private static func lastWrites(_ read: ReadResult) -> (live: [Int64], supersededBy: [Int64: [Int64]]) {
        guard !read.keys.isEmpty, read.keys.count == read.seqs.count else { return (read.seqs, [:]) }
        let (kept, earlier) = lastWritePerKey(read.keys)
        guard kept.count < read.seqs.count else { return (read.seqs, [:]) }
        var supersededBy: [Int64: [Int64]] = [:]
        for (last, indexes) in earlier { supersededBy[read.seqs[last]] = indexes.map { read.seqs[$0] } }
        return (kept.map { read.seqs[$0] }, supersededBy)
    }

    /// Indexes of the rows to send for a merge batch: for each primary key value only the last write, in
    /// order (upserts applied in order give exactly that, and the API refuses a key twice in one request).
    /// Rows without a key are all kept (the API rejects them, and they are dead-lettered). `supersededBy`
    /// gives, for a kept row, the indexes of the earlier writes of its key, in order.
    static func lastWritePerKey<Key: Hashable>(_ keys: [Key?]) -> (kept: [Int], supersededBy: [Int: [Int]]) {
        var last: [Key: Int] = [:]
        for (index, key) in keys.enumerated() {
            if let key { last[key] = index }
        }
        var kept: [Int] = []
        var supersededBy: [Int: [Int]] = [:]
        for (index, key) in keys.enumerated() {
            guard let key, let lastIndex = last[key], lastIndex != index else {
                kept.append(index)
                continue
            }
            supersededBy[lastIndex, default: []].append(index)
        }
        return (kept, supersededBy)
    }
}

/// SplitMix64: a small, fast, seedable generator, so the machine's choices are reproducible in tests.
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

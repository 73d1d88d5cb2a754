import Foundation
import Logging

/// Decides which batch each delivery worker sends next.
///
/// Guarantees:
/// - A merge target has at most one batch in flight, and a batch waiting to be retried goes before any
///   new one, so upserts reach the API in spool order.
/// - An append target has at most `[batch] concurrency` batches in flight.
/// - A target that failed waits out its backoff; the others keep flowing. An authentication failure
///   pauses every target.
/// - A batch is cut when `max_rows` records wait, or when the oldest has waited `linger`.
final class DeliveryScheduler: @unchecked Sendable {
    /// Work for one worker.
    struct Job: Sendable {
        enum Kind: Sendable {
            /// Cut a new batch from `from`, up to (not including) `end`.
            case fresh(from: Int64, end: Int64)
            /// Send a registered batch again.
            case retry(SpoolReader.BatchRow)
            /// Record in the spool that this target waits for an API key (nothing is cut or sent).
            case noteMissingKey
        }

        var targetID: Int64
        var target: SpoolTarget
        var kind: Kind
    }

    /// How a job ended.
    enum Outcome: Sendable {
        case done
        case retry(SpoolReader.BatchRow, after: Duration)
        /// The API refused the key: every target waits.
        case authFailed(SpoolReader.BatchRow, after: Duration)
    }

    private final class TargetState {
        let id: Int64
        let target: SpoolTarget
        var nextSeq: Int64
        var assignedEnd: Int64
        var inflight = 0
        var cutting = false
        var retries: [(batch: SpoolReader.BatchRow, at: ContinuousClock.Instant)] = []
        var backoffUntil: ContinuousClock.Instant?
        var pendingSince: ContinuousClock.Instant?
        var flushThrough: Int64 = 0
        var missingKeyNoted = false

        init(id: Int64, target: SpoolTarget, nextSeq: Int64, assignedEnd: Int64) {
            self.id = id
            self.target = target
            self.nextSeq = nextSeq
            self.assignedEnd = assignedEnd
        }
    }

    private let condition = NSCondition()
    private let reader: SpoolReader
    private let settings: LiveConfiguration
    private let logger: Logger
    private var targets: [Int64: TargetState] = [:]
    private var order: [Int64] = []
    private var cursor = 0
    private var lastRefresh = ContinuousClock.Instant.now - .seconds(3600)
    private var authPausedUntil: ContinuousClock.Instant?
    private var stopping = false
    private var busyWorkers = 0
    /// Monotonic time of the last progress or idle pass, for the watchdog.
    private(set) var heartbeat = ContinuousClock.now

    static let refreshInterval = Duration.milliseconds(50)

    /// Whether there is an API key to send with; without one nothing is cut or sent.
    private let hasKey: @Sendable () -> Bool

    init(spoolPath: String, settings: LiveConfiguration, logger: Logger, hasKey: @escaping @Sendable () -> Bool = { true }) throws(SpoolError) {
        self.reader = try SpoolReader(path: spoolPath)
        self.settings = settings
        self.hasKey = hasKey
        self.logger = logger
        do {
            try load()
        } catch {
            throw SpoolDatabase.classify(error, path: spoolPath)
        }
    }

    /// Targets and batches left by a previous run: open batches are resumed first, in seq order.
    private func load() throws(SQLiteError) {
        let open = try reader.openBatches()
        for row in try reader.targets() {
            let assigned = max(row.deliveredSeq, try reader.assignedEnd(targetID: row.id))
            let state = TargetState(id: row.id, target: row.target, nextSeq: row.nextSeq, assignedEnd: assigned)
            state.retries = open.filter { $0.targetID == row.id }.map { ($0, ContinuousClock.now) }
            if row.nextSeq > assigned { state.pendingSince = .now - .seconds(86_400) }
            targets[row.id] = state
            order.append(row.id)
        }
        if !open.isEmpty {
            logger.info("resuming batches left open by the previous run", metadata: ["batches": "\(open.count)"])
        }
    }

    // MARK: Workers' side

    /// The next job, waiting until one is due; `nil` once stopping.
    func next() -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while !stopping {
            let now = ContinuousClock.now
            if now - lastRefresh >= Self.refreshInterval { refresh(now: now) }
            heartbeat = now
            if let job = pick(now: now) {
                busyWorkers += 1
                return job
            }
            _ = condition.wait(until: Date(timeIntervalSinceNow: 0.05))
        }
        return nil
    }

    /// A fresh job's batch was cut and registered up to `end`.
    func assigned(targetID: Int64, end: Int64) {
        condition.lock()
        defer { condition.unlock() }
        guard let state = targets[targetID] else { return }
        state.assignedEnd = max(state.assignedEnd, end)
        state.cutting = false
        if state.assignedEnd >= state.nextSeq { state.pendingSince = nil }
        condition.broadcast()
    }

    /// A fresh job could not be cut (a spool read failed); try again after a pause.
    func cutFailed(targetID: Int64) {
        condition.lock()
        defer { condition.unlock() }
        busyWorkers -= 1
        if let state = targets[targetID] {
            state.cutting = false
            state.inflight -= 1
            state.backoffUntil = .now + .seconds(1)
        }
        condition.broadcast()
    }

    func finished(targetID: Int64, outcome: Outcome) {
        condition.lock()
        defer { condition.unlock() }
        busyWorkers -= 1
        guard let state = targets[targetID] else { return }
        state.inflight -= 1
        let now = ContinuousClock.now
        switch outcome {
        case .done:
            state.backoffUntil = nil
        case .retry(let batch, let delay):
            enqueueRetry(state, batch, at: now + delay)
            state.backoffUntil = now + delay
        case .authFailed(let batch, let delay):
            enqueueRetry(state, batch, at: now + delay)
            authPausedUntil = now + delay
        }
        heartbeat = now
        condition.broadcast()
    }

    private func enqueueRetry(_ state: TargetState, _ batch: SpoolReader.BatchRow, at: ContinuousClock.Instant) {
        state.retries.append((batch, at))
        state.retries.sort { $0.batch.firstSeq < $1.batch.firstSeq }
    }

    // MARK: Control

    /// Makes everything pending now eligible at once, ignoring linger (SIGUSR1, `definite-agent flush`).
    func flushNow() {
        condition.lock()
        defer { condition.unlock() }
        refresh(now: .now)
        for state in targets.values {
            state.flushThrough = state.nextSeq
            state.backoffUntil = nil
            state.retries = state.retries.map { ($0.batch, ContinuousClock.now) }
        }
        authPausedUntil = nil
        condition.broadcast()
    }

    /// Stops handing out jobs; workers finish what they hold.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    /// Whether every worker is idle (waiting for work).
    var isIdle: Bool {
        condition.lock()
        defer { condition.unlock() }
        return busyWorkers == 0
    }

    var timeSinceHeartbeat: Duration {
        condition.lock()
        defer { condition.unlock() }
        return ContinuousClock.now - heartbeat
    }

    // MARK: Choosing

    private func refresh(now: ContinuousClock.Instant) {
        lastRefresh = now
        guard let rows = try? reader.targets() else { return }
        for row in rows {
            if let state = targets[row.id] {
                state.nextSeq = row.nextSeq
            } else {
                let assigned = max(row.deliveredSeq, (try? reader.assignedEnd(targetID: row.id)) ?? row.deliveredSeq)
                targets[row.id] = TargetState(id: row.id, target: row.target, nextSeq: row.nextSeq, assignedEnd: assigned)
                order.append(row.id)
            }
            let state = targets[row.id]!
            if state.nextSeq > state.assignedEnd, state.pendingSince == nil { state.pendingSince = now }
        }
    }

    private func pick(now: ContinuousClock.Instant) -> Job? {
        guard hasKey() else {
            // Say once per target, in the spool, why its rows do not move.
            for state in targets.values where !state.missingKeyNoted && state.inflight == 0 && state.nextSeq > state.assignedEnd {
                state.missingKeyNoted = true
                state.inflight += 1
                return Job(targetID: state.id, target: state.target, kind: .noteMissingKey)
            }
            return nil
        }
        for state in targets.values { state.missingKeyNoted = false }
        if let until = authPausedUntil {
            guard now >= until else { return nil }
            authPausedUntil = nil
        }
        guard !order.isEmpty else { return nil }
        let batch = settings.current.batch
        for step in 0..<order.count {
            let state = targets[order[(cursor + step) % order.count]]!
            let limit = state.target.mode == .merge ? 1 : batch.concurrency
            guard state.inflight < limit else { continue }
            if let first = state.retries.first {
                if first.at <= now {
                    state.retries.removeFirst()
                    state.inflight += 1
                    cursor = (cursor + step + 1) % order.count
                    return Job(targetID: state.id, target: state.target, kind: .retry(first.batch))
                }
                // Keep order: nothing new for a merge target while one of its batches waits to be retried.
                if state.target.mode == .merge { continue }
            }
            if state.cutting { continue }
            if let until = state.backoffUntil, now < until { continue }
            let waiting = state.nextSeq - state.assignedEnd
            guard waiting > 0 else { continue }
            let lingered = state.pendingSince.map { now - $0 >= batch.linger.duration } ?? false
            guard waiting >= Int64(batch.maxRows) || lingered || state.flushThrough > state.assignedEnd else { continue }
            state.cutting = true
            state.inflight += 1
            cursor = (cursor + step + 1) % order.count
            return Job(targetID: state.id, target: state.target, kind: .fresh(from: state.assignedEnd, end: state.nextSeq))
        }
        return nil
    }
}

import Core
import FoundationEssentials
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The one owner of the spool's write connection: a dedicated thread that commits everything queued
/// since its last commit in one transaction (group commit).
///
/// Requests arriving together from one or many connections share one transaction and so one fsync;
/// throughput is bounded by parsing, not by fsyncs. A batch's promise completes only after its
/// transaction committed (and, under `durability = "full"`, after the WAL was fsynced), which is when
/// intake acknowledges it. On a storage error the whole transaction rolls back and every batch in it
/// fails; nothing partial is ever acknowledged.
///
/// Delivery's bookkeeping (``perform(_:completion:)``) is group-committed too: the transactions queued
/// together run in one commit, each in its own savepoint, so one failing rolls back only itself.
///
/// The writer thread (named `writer`) also attaches and detaches the ``SpoolCheckpointer`` (its hook lives
/// on the write connection), and on stop commits what is queued, checkpoints the WAL and hands the result
/// back: nothing about the write connection happens on any other thread.
///
/// - Note: Thread confinement: `connection` and the statement cache are touched only by the writer thread
///   once ``start()`` returned; the queue is guarded by `condition`. That is why the type is
///   `@unchecked Sendable`.
public final class SpoolWriter: @unchecked Sendable {
    /// What one commit did, for logs and metrics.
    public struct CommitStatistics: Sendable {
        public var batches: Int
        public var records: Int
        public var bytes: Int
    }

    private enum Job {
        case append(Pending)
        /// Work that must run on the write connection (delivery bookkeeping, maintenance).
        case transaction(@Sendable (SQLiteConnection) throws -> Void, @Sendable (Result<Void, any Error>) -> Void)
        /// Attaching or detaching the checkpointer, outside any transaction.
        case checkpointer(start: Bool, done: @Sendable () -> Void)
    }

    private let connection: SQLiteConnection
    /// The spool file this writer opened: looked at again before each commit of records (see
    /// ``SpoolFileIdentity``).
    private let fileIdentity: SpoolFileIdentity?
    /// Set for good once the file at ``path`` is no longer the one open (writer thread only).
    private var fileGone: String?
    /// Copies the WAL into the spool file beside this thread, so that commits seldom wait for it.
    private let checkpointer: SpoolCheckpointer
    /// The spool file.
    package let path: String
    private let logger: Logger
    public let capacity: SpoolCapacity
    private let condition = ConditionLock()
    private var queue: [Job] = []
    /// Whether anything queued is awaited (an ack, an answer): then the next commit does not wait.
    private var awaitedQueued = false
    /// The writer is waiting for more of a bulk stream (``GroupCommit``): only awaited work wakes it.
    private var gathering = false
    private var gatherCount = 0

    /// How many times the writer waited for more of a bulk stream before a commit (``GroupCommit``).
    package var groupCommitWaits: Int { condition.withLock { gatherCount } }
    /// Whether the next commit waits for more of a bulk stream (writer thread only).
    private var groupCommit = GroupCommit()
    private var stopping = false
    private var stopped = false
    /// Signalled by the writer thread once it stopped and the WAL is checkpointed.
    private let finished = CompletionSignal()
    private var targetIDs: [SpoolTarget: Int64] = [:]
    /// Monotonic time of the writer's last sign of life (a commit, or a wake-up), for the watchdog; `nil`
    /// while it waits for work, which is not a stall however long it lasts.
    private let heartbeat = NIOLockedValueBox<ContinuousClock.Instant?>(ContinuousClock.now)
    /// Set (under `condition`) when a refusal of intake began: the writer re-reads the stored total at
    /// once, since another process may have made room the last reading does not know of.
    private var refusalBegan = false
    private var lastFailureLog: ContinuousClock.Instant?
    private var lastResynchronization = ContinuousClock.now
    /// `PRAGMA data_version` when the stored total was last known to be right: it changes when another
    /// connection (a `dlq purge` or `dlq replay` in another process) commits to the spool.
    private var knownDataVersion: Int64?
    /// Whether the disk still has room for intake beyond the reserve kept for delivery.
    private var diskAdmission: DiskAdmission
    /// Told of each commit's appends (guarded by `condition`; read by the writer thread once per commit).
    private var appendObserver: (@Sendable ([AppendedRange]) -> Void)?
    /// The targets the commit in progress appended to, and where.
    private var appended: [Int64: AppendedRange] = [:]
    /// When each target's row was last settled (``TargetLog``), and the targets appended to since.
    private var lastSettled: [Int64: ContinuousClock.Instant] = [:]
    private var unsettled: Set<Int64> = []
    /// How often an appended target's row is settled: a commit of a few records writes one page, and the
    /// target's row at most once per interval (by default a second).
    private let settleInterval: Duration

    /// What one commit appended to one target's log: records `range` (seqs) of `target`, `bytes` as
    /// stored (each record with its newline: what they count for in `pending_bytes`).
    public struct AppendedRange: Sendable, Equatable {
        public var targetID: Int64
        public var target: SpoolTarget
        public var range: Range<Int64>
        public var bytes: Int
    }

    /// Opens the spool at `path` and prepares the writer; call ``start()`` to begin committing.
    ///
    /// - Parameter diskReserve: free space kept on the spool's filesystem for delivery (see
    ///   ``DiskHeadroom``); `nil` picks 5% of the filesystem, at most 64 MiB.
    /// - Parameter access: who may read the spool's files (``SpoolAccess``); an existing spool is set to it,
    ///   and each change is logged.
    /// - Parameter settleInterval: how often at most a target's row is settled (``TargetLog``).
    public init(
        path: String, durability: AgentConfiguration.Durability, maxBytes: Int, diskReserve: Int? = nil,
        access: SpoolAccess = .ownerOnly, settleInterval: Duration = .seconds(1), logger: Logger
    ) throws(SpoolError) {
        let (connection, accessChanges) = try SpoolDatabase.openForWriting(path: path, durability: durability, access: access)
        for change in accessChanges {
            let narrowed = change.oldMode & ~change.newMode != 0
            logger.warning(
                narrowed
                    ? "a spool file could be read by others: its access was narrowed"
                    : "a spool file was given the access [spool] group asks for",
                metadata: [
                    "file": "\(change.path)", "old_mode": "\(SpoolAccess.octal(change.oldMode))",
                    "mode": "\(SpoolAccess.octal(change.newMode))",
                    "old_group": "\(change.oldGroup.map(SpoolAccess.groupName) ?? "unchanged")",
                ])
        }
        self.connection = connection
        self.settleInterval = settleInterval
        self.path = path
        self.fileIdentity = SpoolFileIdentity(path: path)
        self.logger = logger
        self.diskAdmission = DiskAdmission(spoolPath: path, configuredReserve: diskReserve)
        do {
            let pageSize = Int(try connection.scalar("PRAGMA page_size"))
            self.checkpointer = try SpoolCheckpointer(path: path, durability: durability, pageSize: pageSize, logger: logger)
            let stored = try Self.storedBytes(connection)
            self.capacity = SpoolCapacity(limit: maxBytes, used: stored)
            try loadTargets()
        } catch let error as SpoolError {
            throw error
        } catch let error as SQLiteError {
            throw SpoolDatabase.classify(error, path: path)
        } catch {
            throw SpoolError(.cannotOpen, path: path, "\(error)", cause: error)
        }
    }

    /// Calls `observer` on the writer thread after each commit that appended records, with what each
    /// target received (so delivery learns of new rows without reading the spool). Keep it short.
    public func observeAppends(_ observer: @escaping @Sendable ([AppendedRange]) -> Void) {
        condition.lock()
        appendObserver = observer
        condition.unlock()
    }

    /// Starts the writer thread.
    public func start() {
        NamedThread.start("writer") { [self] in run() }
    }

    /// Attaches the ``SpoolCheckpointer`` (on the writer thread) and starts its thread; returns once it runs.
    package func startCheckpointer() async {
        await onWriterThread { .checkpointer(start: true, done: $0) }
    }

    /// Stops the checkpointer's thread and gives checkpointing back to SQLite on the write connection;
    /// returns once done. Nothing to do once the writer stops (its stop does the same).
    package func stopCheckpointer() async {
        await onWriterThread { .checkpointer(start: false, done: $0) }
    }

    private func onWriterThread(_ job: (@escaping @Sendable () -> Void) -> Job) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.lock()
            guard !stopping else {
                condition.unlock()
                continuation.resume()
                return
            }
            queue.append(job { continuation.resume() })
            condition.signal()
            condition.unlock()
        }
    }

    /// A batch queued for the next commit, and who hears of it.
    private struct Pending {
        var batch: SpoolBatch
        var promise: EventLoopPromise<Void>
        /// Told the seqs the batch's records got, on the writer thread, inside the transaction (so before any
        /// reader can see the records); the commit may still fail, and then `promise` fails.
        var appended: (@Sendable ([AppendedRange]) -> Void)?
    }

    /// Queues a batch; `promise` succeeds once it is durable, or fails with a ``SpoolWriteError``.
    /// The batch's bytes must already be reserved in ``capacity``. `awaited`: whether anyone waits for the
    /// commit (an ack, an answer); a batch nobody waits for may wait up to ``GroupCommit/window`` to share
    /// its commit with more of a bulk stream. `appended`, when given, hears the seqs
    /// the records got (on the writer thread, before the commit makes them visible to any reader; if the
    /// commit fails, `promise` fails after it).
    public func submit(
        _ batch: SpoolBatch, promise: EventLoopPromise<Void>, awaited: Bool = true,
        appended: (@Sendable ([AppendedRange]) -> Void)? = nil
    ) {
        condition.lock()
        guard !stopping else {
            condition.unlock()
            capacity.cancelReservation(batch.totalBytes)
            promise.fail(SpoolWriteError(.stopping, "the agent is shutting down; retry shortly"))
            return
        }
        queue.append(.append(Pending(batch: batch, promise: promise, appended: appended)))
        if awaited { awaitedQueued = true }
        if awaited || !gathering { condition.signal() }
        condition.unlock()
    }

    /// Runs `body` in a transaction on the write connection, after what is queued before it: in its own
    /// savepoint of a commit it may share with other `perform` jobs queued with it. `completion` (on the
    /// writer thread) hears the outcome once the commit is durable, or the failure of `body` or the commit.
    func perform(
        _ body: @escaping @Sendable (SQLiteConnection) throws -> Void, completion: @escaping @Sendable (Result<Void, any Error>) -> Void
    ) {
        condition.lock()
        guard !stopping else {
            condition.unlock()
            completion(.failure(SpoolError(.storage, path: path, "the spool writer has stopped")))
            return
        }
        queue.append(.transaction(body, completion))
        awaitedQueued = true
        condition.signal()
        condition.unlock()
    }

    /// How long since the writer last showed progress; zero while it waits for work.
    public var timeSinceHeartbeat: Duration {
        heartbeat.withLockedValue { $0 }.map { ContinuousClock.now - $0 } ?? .zero
    }

    /// Refuses new work, commits everything queued, stops the checkpointer and the thread, and checkpoints
    /// the WAL; returns once that is done (or at once when the task is cancelled: stopping at once, the
    /// thread finishes on its own, and whatever it has not committed was never acknowledged).
    package func stop() async {
        requestStop()
        _ = await finished.wait()
    }

    /// ``stop()`` for synchronous callers: blocks the calling thread until the writer stopped. Not for
    /// async code.
    public func shutdown() {
        requestStop()
        condition.lock()
        while !stopped { condition.wait() }
        condition.unlock()
    }

    private func requestStop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    // MARK: The writer thread

    private func run() {
        capacity.whenRefusalBegins { [weak self] in
            guard let self else { return }
            condition.withLock {
                refusalBegan = true
                condition.signal()
            }
        }
        while true {
            condition.lock()
            // With nothing to commit the thread sleeps until work comes: an idle daemon does not wake it.
            // Only while intake is refused (the disk, or max_bytes) does it look every second, to keep the
            // WAL small and re-read the stored total, so that the refusal ends as soon as room appears
            // (room `dlq purge` in another process made too); and once after appends, when the first
            // target appended to is due to be settled (TargetLog).
            if queue.isEmpty && !stopping && !refusalBegan {
                heartbeat.withLockedValue { $0 = nil }
                let settling = nextSettlement().map { $0 - ContinuousClock.now }
                if capacity.refusal?.endsWithRoom == true || diskAdmission.isRefusing {
                    condition.wait(timeout: min(.seconds(1), settling ?? .seconds(1)))
                } else if let settling {
                    condition.wait(timeout: settling)
                } else {
                    condition.wait()
                }
            }
            if !queue.isEmpty,
                let delay = groupCommit.delay(
                    awaited: awaitedQueued, stopping: stopping, refusing: refusalBegan || capacity.refusal != nil)
            {
                // Records nobody waits for, in a bulk stream: let more join this commit (GroupCommit). Only
                // awaited work, stopping or a refusal wakes the thread early (submits meanwhile do not).
                gathering = true
                gatherCount += 1
                let deadline = ContinuousClock.now + delay
                while !awaitedQueued, !stopping, !refusalBegan, case let left = deadline - .now, left > .zero {
                    condition.wait(timeout: left)
                }
                gathering = false
            }
            awaitedQueued = false
            let resynchronizeNow = refusalBegan
            refusalBegan = false
            if queue.isEmpty && stopping {
                condition.unlock()
                finish()
                return
            }
            let jobs = queue
            queue.removeAll(keepingCapacity: true)
            condition.unlock()
            // Working from now on: a commit that hangs (a lock held elsewhere, a stuck disk) ages this.
            heartbeat.withLockedValue { $0 = ContinuousClock.now }

            // Runs of appends and runs of transactions are each one commit, in queue order.
            if jobs.isEmpty {
                settle(due(at: .now))
                if diskAdmission.reconsider(connection) { capacity.diskHasRoom() }
            }
            var appends: [Pending] = []
            var transactions: [Transaction] = []
            func flush() {
                if !appends.isEmpty {
                    commit(appends)
                    appends.removeAll()
                }
                if !transactions.isEmpty {
                    commit(transactions)
                    transactions.removeAll()
                    diskAdmission.relievePressure(connection)
                }
            }
            for job in jobs {
                switch job {
                case .append(let pending):
                    if !transactions.isEmpty { flush() }
                    appends.append(pending)
                case .transaction(let body, let completion):
                    if !appends.isEmpty { flush() }
                    transactions.append((body, completion))
                case .checkpointer(let start, let done):
                    flush()
                    if start { checkpointer.start(writer: connection) } else { checkpointer.stop(writer: connection) }
                    done()
                }
            }
            flush()
            diskAdmission.relievePressure(connection)
            let now = ContinuousClock.now
            heartbeat.withLockedValue { $0 = now }
            let dataVersion = try? connection.scalar("PRAGMA data_version")
            if resynchronizeNow || dataVersion != knownDataVersion
                || (capacity.refusal?.endsWithRoom == true && now - lastResynchronization > .seconds(5))
            {
                lastResynchronization = now
                knownDataVersion = dataVersion
                if let stored = try? Self.storedBytes(connection) { capacity.resynchronize(stored: stored) }
            }
        }
    }

    /// How long the last checkpoint waits for other processes' readers of the spool.
    static let finalCheckpointPatienceMilliseconds = 1000

    /// The writer thread's last act: the checkpointer stops, the WAL is copied into the file and truncated,
    /// and whoever waits for the stop hears of it.
    private func finish() {
        settle(unsettled)
        checkpointer.stop(writer: connection)
        do {
            // Another process reading the spool (an `sqlite3` shell left open, a backup) holds the
            // checkpoint back: waited for at most a second, not the 10 s busy timeout, which took an idle
            // stop to its drain deadline, and said (SQLite reports it in the result row, not as an error).
            try connection.execute("PRAGMA busy_timeout = \(Self.finalCheckpointPatienceMilliseconds)")
            let checkpoint = try connection.prepared("PRAGMA wal_checkpoint(TRUNCATE)")
            defer { checkpoint.reset() }
            // The row: busy, frames in the WAL, frames copied. Busy with every frame copied is only the
            // truncation held back: nothing waits for the next start then.
            if try checkpoint.step(), checkpoint.int(0) != 0, checkpoint.int(2) < checkpoint.int(1) {
                logger.notice(
                    "the spool's WAL was not copied into the spool file at the stop: another process reads the spool (an sqlite3 shell, a backup?); nothing is lost, the next start does it",
                    metadata: ["spool": "\(path)"])
            }
        } catch {
            logger.warning(
                "could not checkpoint the spool at shutdown; the WAL is replayed at the next start", metadata: ["error": "\(error)"])
        }
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
        finished.signal()
    }

    private typealias Transaction = (
        body: @Sendable (SQLiteConnection) throws -> Void, completion: @Sendable (Result<Void, any Error>) -> Void
    )

    /// Runs queued transactions in one commit, each in a savepoint: a body that throws is rolled back alone
    /// and fails alone; a commit that fails fails them all.
    private func commit(_ transactions: [Transaction]) {
        var outcomes: [Result<Void, any Error>] = []
        let committed = runTransaction { db in
            for transaction in transactions {
                try db.execute("SAVEPOINT job")
                do {
                    try transaction.body(db)
                    try db.execute("RELEASE job")
                    outcomes.append(.success(()))
                } catch {
                    try db.execute("ROLLBACK TO job; RELEASE job")
                    outcomes.append(.failure(error))
                }
            }
        }
        for (index, transaction) in transactions.enumerated() {
            switch committed {
            case .success: transaction.completion(outcomes[index])
            case .failure(let error): transaction.completion(.failure(error))
            }
        }
    }

    private func runTransaction(_ body: (SQLiteConnection) throws -> Void) -> Result<Void, any Error> {
        do {
            try connection.execute("BEGIN IMMEDIATE")
            do {
                try body(connection)
                try connection.execute("COMMIT")
            } catch {
                try? connection.execute("ROLLBACK")
                throw error
            }
            return .success(())
        } catch {
            return .failure(error)
        }
    }

    /// Appends every batch's records in one transaction, then completes the promises.
    private func commit(_ queued: [Pending]) {
        if let refusal = refusalForAGoneFile() {
            for pending in queued {
                capacity.cancelReservation(pending.batch.totalBytes)
                pending.promise.fail(refusal)
            }
            return
        }
        let batches = admitWithinDiskHeadroom(queued)
        guard !batches.isEmpty else { return }
        appended.removeAll(keepingCapacity: true)
        let started = ContinuousClock.now
        var settledNow: [Int64] = []
        let result = runTransaction { db in
            // Each batch's records go in as they are, target by target, in arrival order: no copy into a
            // per-commit buffer (memory stays what the batches already hold), and seqs stay in order.
            let now = Date().timeIntervalSince1970
            for pending in batches {
                var ranges: [AppendedRange] = []
                for (index, target) in pending.batch.targets.enumerated() where pending.batch.counts[index] > 0 {
                    if let range = try self.append(pending.batch, group: index, to: target, at: now, db: db) { ranges.append(range) }
                }
                if !pending.batch.counters.isEmpty { try Self.add(pending.batch.counters, db: db) }
                pending.appended?(ranges)
            }
            for id in self.appended.keys where self.isDue(id, at: started) {
                try TargetLog.settle(id, db: db)
                settledNow.append(id)
            }
        }
        if case .success = result {
            groupCommit.committed(records: batches.reduce(0) { $0 + $1.batch.totalRecords })
        } else {
            groupCommit.committed(records: 0)
        }
        switch result {
        case .success:
            unsettled.formUnion(appended.keys)
            recordSettled(settledNow, at: started)
            for pending in batches {
                capacity.commitReservation(pending.batch.totalBytes)
                pending.promise.succeed(())
            }
            if !appended.isEmpty {
                condition.lock()
                let observer = appendObserver
                condition.unlock()
                observer?(Array(appended.values))
            }
        case .failure(let error):
            // Targets created in the failed transaction were rolled back too.
            targetIDs.removeAll()
            try? loadTargets()
            let rejection = rejection(for: error)
            for pending in batches {
                capacity.cancelReservation(pending.batch.totalBytes)
                pending.promise.fail(rejection)
            }
        }
    }

    /// Whether target `id`'s row was last settled at least ``settleInterval`` before `now` (or never).
    private func isDue(_ id: Int64, at now: ContinuousClock.Instant) -> Bool {
        lastSettled[id].map { now - $0 >= settleInterval } ?? true
    }

    /// When the first target appended to since its row was settled is due to be settled again, if any is.
    private func nextSettlement() -> ContinuousClock.Instant? {
        unsettled.lazy.map { self.lastSettled[$0].map { $0 + self.settleInterval } ?? .now }.min()
    }

    /// The targets appended to since their row was settled, and settled longer than ``settleInterval`` ago.
    private func due(at now: ContinuousClock.Instant) -> Set<Int64> {
        unsettled.filter { isDue($0, at: now) }
    }

    /// Settles `targets`' rows (``TargetLog``) in a commit of their own: when the writer idles, and before it
    /// stops. A failure leaves them as they were, which is still correct.
    private func settle(_ targets: Set<Int64>) {
        guard !targets.isEmpty else { return }
        let now = ContinuousClock.now
        if case .success = runTransaction({ db in for id in targets { try TargetLog.settle(id, db: db) } }) {
            recordSettled(targets, at: now)
        }
    }

    /// Notes that `targets`' rows were settled at `instant`, and forgets the settlements whose interval is
    /// over (a target not in ``lastSettled`` is due), so the map holds only targets settled within it.
    private func recordSettled(_ targets: some Collection<Int64>, at instant: ContinuousClock.Instant) {
        guard !targets.isEmpty else { return }  // most commits settle nothing
        for id in targets {
            lastSettled[id] = instant
            unsettled.remove(id)
        }
        lastSettled = lastSettled.filter { unsettled.contains($0.key) || instant - $0.value < settleInterval }
    }

    /// The batches, in order, that fit before the disk reserve (``DiskAdmission``); the others are
    /// refused with 507 here. Whether intake is refused for want of disk goes to ``capacity``, where the
    /// daemon's reporter logs the start and the end of it (and `status` and the metrics show it).
    private func admitWithinDiskHeadroom(_ batches: [Pending]) -> [Pending] {
        let admitted: Int
        let refusal: DiskAdmission.Refusal
        switch diskAdmission.admit(batches.map { $0.batch.totalBytes }, connection: connection) {
        case .all(let resumed):
            if resumed { capacity.diskHasRoom() }
            return batches
        case .part(let count, let reason):
            (admitted, refusal) = (count, reason)
        }
        let figures = "\(refusal.filesystemFree) free, \(refusal.reserve) kept for delivery"
        capacity.diskIsFull(figures)
        let rejection = Self.diskFull(figures)
        for pending in batches[admitted...] {
            capacity.cancelReservation(pending.batch.totalBytes)
            pending.promise.fail(rejection)
        }
        return Array(batches[..<admitted])
    }

    /// Appends a batch's records for `target` (a run of records per tag set), in order; returns the seqs
    /// they got.
    private func append(
        _ batch: SpoolBatch, group index: Int, to target: SpoolTarget, at now: Double,
        db: SQLiteConnection
    ) throws -> AppendedRange? {
        let id = try targetID(for: target, at: now, db: db)
        var these: Range<Int64>?
        for run in batch.runs(of: index) {
            let seqs = try SegmentLog.append(
                batch.records[index][run.bytes], count: run.count, targetID: id, tags: run.tags, at: now, db: db)
            appended[id] = AppendedRange(
                targetID: id, target: target, range: (appended[id]?.range.lowerBound ?? seqs.lowerBound)..<seqs.upperBound,
                bytes: (appended[id]?.bytes ?? 0) + run.bytes.count)
            these = (these?.lowerBound ?? seqs.lowerBound)..<seqs.upperBound
        }
        return these.map { AppendedRange(targetID: id, target: target, range: $0, bytes: batch.records[index].count) }
    }

    private func targetID(for target: SpoolTarget, at now: Double, db: SQLiteConnection) throws -> Int64 {
        if let id = targetIDs[target] { return id }
        let insert = try db.prepared(
            "INSERT INTO targets (table_name, mode, primary_key, tags, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING")
        insert.bind(1, target.table)
        insert.bind(2, target.mode.rawValue)
        insert.bind(3, target.primaryKey)
        insert.bind(4, target.tags)
        insert.bind(5, now)
        try insert.step()
        insert.reset()
        let select = try db.prepared("SELECT id FROM targets WHERE table_name = ?1 AND mode = ?2 AND primary_key = ?3 AND tags = ?4")
        select.bind(1, target.table)
        select.bind(2, target.mode.rawValue)
        select.bind(3, target.primaryKey)
        select.bind(4, target.tags)
        guard try select.step() else { throw SpoolError(.storage, path: path, "could not create target \(target)") }
        let id = select.int64(0)
        select.reset()
        targetIDs[target] = id
        return id
    }

    private func loadTargets() throws {
        let select = try connection.prepared("SELECT id, table_name, mode, primary_key, tags FROM targets")
        defer { select.reset() }
        while try select.step() {
            let target = SpoolTarget(
                table: select.string(1) ?? "", mode: try select.mode(2), primaryKey: select.string(3) ?? "", tags: select.string(4) ?? "")
            targetIDs[target] = select.int64(0)
        }
    }

    static func storedBytes(_ db: SQLiteConnection) throws(SQLiteError) -> Int {
        Int(try db.scalar("SELECT coalesce(sum(\(TargetLog.storedBytes)), 0) FROM targets t"))
            + Int(try db.scalar("SELECT coalesce(sum(byte_count), 0) FROM dead_letters"))
    }

    /// A full disk, with the figures when they are known.
    private static func diskFull(_ figures: String?, cause: SQLiteError? = nil) -> SpoolWriteError {
        SpoolWriteError(
            .diskFull, "the disk holding the spool is full\(figures.map { " (\($0))" } ?? ""); nothing from this request was stored",
            cause: cause)
    }

    /// A refusal for every record from the moment the file at ``path`` is no longer the spool this writer
    /// opened (removed, or replaced by another file). Records committed to the file open would be
    /// acknowledged and then lost at the next start, which opens whatever is at the path (a removed file
    /// took its records with it, silently, and a second daemon could open a new spool at the path meanwhile).
    /// Said once, at critical level; writers are refused until a restart.
    private func refusalForAGoneFile() -> SpoolWriteError? {
        if fileGone == nil, let fileIdentity, let change = fileIdentity.change() {
            fileGone = change
            capacity.spoolFileGone(
                "the spool file \(path) was \(change) while the daemon runs; restart the daemon (records still pending in the old file are lost)"
            )
            logger.critical(
                "the spool file was \(change) while the daemon runs: records are refused from now on (nothing is acknowledged that is not stored); restart the daemon to open the spool at the path again (records still pending in the old file are lost)",
                metadata: ["spool": "\(path)"])
        }
        guard let fileGone else { return nil }
        return SpoolWriteError(
            .storage, "the spool file \(path) was \(fileGone) while the agent runs; nothing is stored until it is restarted")
    }

    private func rejection(for error: any Error & Sendable) -> SpoolWriteError {
        let now = ContinuousClock.now
        let shouldLog = lastFailureLog.map { now - $0 > .seconds(10) } ?? true
        if shouldLog {
            lastFailureLog = now
            logger.error(
                "spool commit failed; the writers get an error and nothing of that commit was stored",
                metadata: ["error": "\(error)", "spool": "\(path)"])
        }
        if let sqlite = error as? SQLiteError, sqlite.isDiskFull {
            return Self.diskFull(nil, cause: sqlite)
        }
        return SpoolWriteError(.storage, "the spool could not store this request; nothing from it was stored", cause: error)
    }
}

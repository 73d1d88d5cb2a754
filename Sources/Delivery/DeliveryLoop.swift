import Core
import FoundationEssentials
import Glibc
import Logging
import Metrics
import NIOConcurrencyHelpers
import Spool

/// The API key delivery uses now; replaced on reload without a restart.
package typealias APIKeyBox = NIOLockedValueBox<APIKey?>

/// Delivery's one I/O loop (thread `delivery`): it owns the ``DeliveryMachine`` and the requests in flight
/// (``HTTPMultiClient``) and carries out the machine's steps without ever blocking on one. Spool reads and
/// request bodies (gzip) run on ``DeliveryWorkers``, spool writes on the ``SpoolWriter``'s thread, HTTP in
/// libcurl's multi interface; each result comes back to the loop, which hands it to the machine and
/// starts the step that follows.
///
/// Bounds, whatever the backlog:
/// - batches in progress (each at most one request in flight): the ``AdaptiveConcurrency`` limit, at most
///   `[batch] max_in_flight`;
/// - rows they hold in memory: ``memoryBudget`` (twice `[batch] max_bytes`), reserved before a read by an
///   estimate (the rows asked for times the bytes per row seen lately, with a margin), then by what was read.
///   Once a request's body is built its rows' bytes are let go (the body, a fraction of them gzipped, is
///   what a request in flight holds); they are read again only when needed (isolating refused rows,
///   dead-lettering them), so more requests fit in flight in the same memory;
/// - buffers of rows already sent, kept for the next reads while batches keep coming (``RowBufferPool``):
///   at most one per worker, none once nothing is in progress.
///
/// It learns of new rows from the writer after each commit (``SpoolWriter/observeAppends(_:)``), not by
/// polling; a read of the spool's targets every ``pollInterval`` catches rows another process put back
/// (`dlq replay`). With nothing to do it wakes up once per ``pollInterval``.
///
/// Stopping: no new batch starts; answers still arriving are recorded; at the deadline the requests still
/// in flight are abandoned (their rows stay in the spool and go again at the next start).
package final class DeliveryLoop: @unchecked Sendable {
    /// One piece of delivery in progress: the machine's step for it, and the rows it holds.
    private struct Chain {
        var step: DeliveryMachine.Step
        var records = SpooledRecords()
        /// Bytes counted against the memory budget.
        var reserved = 0
        /// The adaptive limit was in use when its request went (for ``AdaptiveConcurrency``).
        var saturated = false
        /// The batch the chain works on, to read its rows again once their bytes were let go.
        var batch: (targetID: Int64, range: Range<Int64>)?
        /// The snapshot the API gave for the chain's last request (with `wait: true`).
        var snapshotID: String?
    }

    /// What comes back to the loop from other threads.
    private enum Event: Sendable {
        case read(chain: Int, DeliveryMachine.Outcome, SpooledRecords)
        /// A batch's rows read again for a step that needs their bytes; `nil` when that failed.
        case reread(chain: Int, SpooledRecords?)
        case recorded(chain: Int, Result<Void, any Error>)
        case built(chain: Int, Built)
        case appended([SpoolWriter.AppendedRange])
        case polled([SpoolReader.TargetRow])
        case flush
        /// The configuration was reloaded: the loop goes round, so new settings (a shorter linger) apply now.
        case reconfigured
        /// Stop by the deadline it reads (it may come closer: a second SIGTERM stops at once).
        case stop(deadline: @Sendable () -> ContinuousClock.Instant)
    }

    /// A request ready to go, or the outcome of a send that cannot be made.
    private enum Built: Sendable {
        case request(HTTPRequest)
        case unsent(DeliveryMachine.Outcome)
    }

    static let pollInterval = Duration.seconds(5)
    /// A record that failed (a full disk, a locked spool) is tried again after this.
    static let recordRetryInterval = Duration.seconds(1)

    private let settings: LiveConfiguration
    private let key: APIKeyBox
    private let writer: SpoolWriter
    /// Local requests waiting for their rows' commit (`config.wait = true`), if any may.
    private let confirmations: RemoteConfirmations?
    private let ledger: DeliveryLedger
    private let logger: Logger
    private let host = ProcessInfo.processInfo.hostName
    private let workers: DeliveryWorkers
    private let multi: HTTPMultiClient
    private let finished = CompletionSignal()
    /// Buffers of rows already sent, for the next reads while batches keep coming.
    private let rowBuffers = RowBufferPool(limit: workerCount)

    private let inbox = NIOLockedValueBox<[Event]>([])
    private let heartbeat = NIOLockedValueBox(ContinuousClock.now)
    private let busy = NIOLockedValueBox(false)

    // Confined to the loop thread.
    private var machine: DeliveryMachine
    private var chains: [Int: Chain] = [:]
    private var nextChain = 0
    private var concurrency: AdaptiveConcurrency
    private var reservedBytes = 0
    /// Stored bytes per row lately read: what a read is expected to bring.
    private var bytesPerRow = 1024.0
    private var retries: [(at: ContinuousClock.Instant, chain: Int)] = []
    private var stopDeadline: (@Sendable () -> ContinuousClock.Instant)?
    private var lastPoll = ContinuousClock.now
    private var polling = false
    private var lastLogged: [Int64: ContinuousClock.Instant] = [:]
    /// Targets in a failure state (backing off, held, auth failing): the latest, and since when one has
    /// lasted; "delivery resumed" is logged when rows of theirs go again.
    private var failing: [Int64: (state: TargetState.Kind, since: ContinuousClock.Instant)] = [:]

    /// Reads the spool's targets and open batches (so: not on the cooperative pool).
    package init(
        settings: LiveConfiguration, writer: SpoolWriter, key: APIKeyBox, confirmations: RemoteConfirmations? = nil,
        logger: Logger
    ) throws(SpoolError) {
        let configuration = settings.current
        let reader = try SpoolReader(path: configuration.spool.path)
        let restored: [DeliveryMachine.Restored]
        do {
            restored = try Self.restore(reader)
        } catch {
            throw SpoolDatabase.classify(error, path: configuration.spool.path)
        }
        self.settings = settings
        self.key = key
        self.writer = writer
        self.confirmations = confirmations
        self.ledger = DeliveryLedger(writer: writer)
        self.logger = logger
        self.machine = DeliveryMachine(
            restoring: restored, settings: .init(configuration), seed: .random(in: .min ... .max),
            now: Self.now())
        self.concurrency = AdaptiveConcurrency(ceiling: configuration.batch.maxInFlight)
        self.multi = HTTPMultiClient(maxConnections: configuration.batch.maxInFlight)
        self.workers = try DeliveryWorkers(count: Self.workerCount, spoolPath: configuration.spool.path)
        if machine.openBatchCount > 0 {
            logger.info("resuming batches left open by the previous run", metadata: ["batches": "\(machine.openBatchCount)"])
        }
    }

    /// Spool reads and gzip, beside the loop.
    static let workerCount = 2

    private static func restore(_ reader: SpoolReader) throws(SQLiteError) -> [DeliveryMachine.Restored] {
        let open = try reader.openBatches()
        return try reader.targets().map { row throws(SQLiteError) in
            DeliveryMachine.Restored(
                row: row, assignedEnd: try reader.assignedEnd(targetID: row.id),
                batches: open.filter { $0.targetID == row.id })
        }
    }

    static func now() -> DeliveryMachine.Now {
        DeliveryMachine.Now(instant: .now, date: Date())
    }

    /// Rows held by batches in progress, at most (a read reserves `[batch] max_bytes` until it is done).
    var memoryBudget: Int { 2 * settings.current.batch.maxBytes.bytes }

    // MARK: Control (any thread)

    /// Starts the loop's thread; new rows reach it from `writer` from now on.
    package func start() {
        writer.observeAppends { [weak self] ranges in self?.post(.appended(ranges)) }
        workers.start()
        NamedThread.start("delivery") { [self] in
            run()
            workers.stop()
            finished.signal()
        }
    }

    /// Everything pending goes now, ignoring linger and any backoff (SIGUSR1; SIGHUP with a new key or
    /// new `[api]` settings).
    package func flushNow() {
        post(.flush)
    }

    /// The configuration was reloaded: what is due is worked out again with the new settings at once (a
    /// shorter linger, a different `max_rows`), without cutting a backoff or linger short.
    package func configurationReloaded() {
        post(.reconfigured)
    }

    /// Starts no new batch, and gives what is in flight until `deadline` (read again as the loop goes
    /// round); returns once the loop ended. Cancelling the waiting task stops the loop at once.
    package func stop(deadline: @escaping @Sendable () -> ContinuousClock.Instant) async {
        post(.stop(deadline: deadline))
        await withTaskCancellationHandler {
            _ = await finished.wait()
        } onCancel: {
            post(.stop(deadline: { .now }))
        }
    }

    /// How long since the loop last went round (it does at least every ``pollInterval``), for the watchdog.
    package var timeSinceHeartbeat: Duration { ContinuousClock.now - heartbeat.withLockedValue { $0 } }

    /// Whether no batch is in progress.
    var isIdle: Bool { !busy.withLockedValue { $0 } }

    private func post(_ event: Event) {
        inbox.withLockedValue { $0.append(event) }
        multi.wakeUp()
    }

    // MARK: The loop

    private func run() {
        while true {
            let now = Self.now()
            heartbeat.withLockedValue { $0 = now.instant }
            for event in inbox.withLockedValue({ events in
                defer { events.removeAll() }
                return events
            }) {
                handle(event, now: now)
            }
            if let deadline = stopDeadline?(), chains.isEmpty || now.instant >= deadline { break }
            machine.reconfigure(.init(settings.current))
            retryRecords(now: now)
            admit(now: now)
            if chains.isEmpty { rowBuffers.drain() }
            pollIfDue(now: now)
            busy.withLockedValue { $0 = !chains.isEmpty }
            for completion in multi.run(timeout: timeout(now: now)) { answered(completion) }
        }
        if !chains.isEmpty {
            logger.warning(
                "delivery did not finish within the drain bound; the unconfirmed batches stay in the spool and are sent at the next start",
                metadata: ["batches": "\(chains.count)"])
        }
        multi.cancelAll()
    }

    /// Until something is due: a backoff or linger ending, a record to retry, the next poll; at most a poll
    /// interval (a stop or a result from another thread wakes the loop at once).
    private func timeout(now: DeliveryMachine.Now) -> Duration {
        var wake = lastPoll + Self.pollInterval
        if let due = machine.nextWakeUp(after: now) { wake = min(wake, due) }
        if let retry = retries.map(\.at).min() { wake = min(wake, retry) }
        if let deadline = stopDeadline?() { wake = min(wake, deadline) }
        return max(.zero, wake - now.instant)
    }

    private func handle(_ event: Event, now: DeliveryMachine.Now) {
        switch event {
        case .read(let id, let outcome, let records):
            guard let chain = chains[id] else { return }
            if case .readFailed(let error) = outcome {
                // The machine pauses the table a second and reads again; the operator hears of it here.
                let targetID: Int64? =
                    switch chain.step {
                    case .cut(let cut): cut.targetID
                    case .load(let load): load.targetID
                    default: nil
                    }
                logOnce(
                    -3, "cannot read rows from the spool; the table waits and is read again every second",
                    ["table": "\(targetID.flatMap(machine.table(of:)) ?? "?")", "error": "\(error)"])
            }
            chains[id]!.records = records
            reserve(id, bytes: records.bytes.count)
            if !records.isEmpty { bytesPerRow = bytesPerRow * 0.8 + Double(records.bytes.count) / Double(records.count) * 0.2 }
            advance(id, outcome, now: now)
        case .reread(let id, let records):
            guard let chain = chains[id] else { return }
            guard let records else {
                logOnce(-4, "cannot read a batch's rows back from the spool; trying again")
                if case .send = chain.step {
                    advance(id, .noAnswer("the batch's rows could not be read back from the spool"), now: now)
                } else {
                    retries.append((now.instant + Self.recordRetryInterval, id))
                }
                return
            }
            chains[id]!.records = records
            reserve(id, bytes: records.footprint)
            perform(id)
        case .recorded(let id, let result):
            guard let chain = chains[id] else { return }
            switch result {
            case .success:
                switch chain.step {
                case .record(let record), .register(let record):
                    if case .record = chain.step { report(record.change) }
                    settleWaiting(record.change, snapshotID: chain.snapshotID)
                default:
                    break
                }
                advance(id, .recorded, now: now)
            case .failure(let error):
                if case .register = chain.step {
                    logOnce(-2, "cannot register a batch in the spool; its rows stay queued and are cut again", ["error": "\(error)"])
                    advance(id, .notRecorded("\(error)"), now: now)
                } else if stopDeadline != nil {
                    advance(id, .notRecorded("\(error)"), now: now)
                } else {
                    // It may hold rows the API has: write it again, never send them again.
                    logOnce(
                        -1, "cannot record a delivery in the spool; retrying the write (the rows are not sent again)", ["error": "\(error)"]
                    )
                    retries.append((now.instant + Self.recordRetryInterval, id))
                }
            }
        case .built(let id, let result):
            guard chains[id] != nil else { return }
            switch result {
            case .request(let request):
                AgentMetrics.bytesSent.increment(by: Int64(request.body.count))
                multi.start(request, id: id)
                recycle(chains[id]!.records.releaseBytes())
                reserve(id, bytes: chains[id]!.records.footprint + request.body.count)
            case .unsent(let outcome):
                advance(id, outcome, now: now)
            }
        case .appended(let ranges):
            machine.observe(
                ranges.map {
                    DeliveryMachine.LogEnd(
                        targetID: $0.targetID, target: $0.target, start: $0.range.lowerBound, end: $0.range.upperBound, bytes: $0.bytes)
                },
                now: now)
        case .polled(let rows):
            polling = false
            machine.observe(
                rows.map { DeliveryMachine.LogEnd(targetID: $0.id, target: $0.target, start: $0.deliveredSeq, end: $0.nextSeq) },
                now: now)
        case .flush:
            for targetID in machine.flushNow() {
                // An idle table's hold ended: `status` and `--check` no longer show it.
                var change = DeliveryLedger.Change(targetID: targetID)
                change.state = .idle
                ledger.apply(change, records: SpooledRecords()) { _ in }
            }
            lastPoll = now.instant - Self.pollInterval
        case .reconfigured:
            break  // the round reconfigures the machine and works out its next wake-up
        case .stop(let deadline):
            if let earlier = stopDeadline {
                stopDeadline = { @Sendable in min(earlier(), deadline()) }
            } else {
                stopDeadline = deadline
            }
            machine.stop()
        }
    }

    /// Starts batches while the adaptive limit and the memory budget allow and the machine has work.
    private func admit(now: DeliveryMachine.Now) {
        while stopDeadline == nil, chains.count < concurrency.limit, reservedBytes < memoryBudget,
            let step = machine.nextStep(now: now, hasKey: key.withLockedValue({ $0 != nil }))
        {
            let id = nextChain
            nextChain += 1
            chains[id] = Chain(step: step)
            perform(id)
        }
    }

    /// The machine's next step for `id` after `outcome`, or the end of the chain.
    private func advance(_ id: Int, _ outcome: DeliveryMachine.Outcome, now: DeliveryMachine.Now) {
        guard let chain = chains[id] else { return }
        guard let next = machine.complete(chain.step, with: outcome, now: now) else {
            reservedBytes -= chain.reserved
            let records = chains.removeValue(forKey: id)?.records
            if let records, records.holdsBytes { recycle(records.bytes) }
            return
        }
        chains[id]!.step = next
        perform(id)
    }

    /// What reading `rows` rows is expected to hold, at most `limit`.
    private func expectedBytes(rows: Int64, limit: Int) -> Int {
        min(limit, Int(Double(max(rows, 1)) * bytesPerRow * 1.5) + 4096)
    }

    /// Keeps the buffer of rows a chain let go for a later read, if a batch under the current
    /// `[batch] max_bytes` would fit it.
    private func recycle(_ buffer: [UInt8]) {
        rowBuffers.recycle(buffer, maxCapacity: 2 * settings.current.batch.maxBytes.bytes)
    }

    private func reserve(_ id: Int, bytes: Int) {
        reservedBytes += bytes - chains[id]!.reserved
        chains[id]!.reserved = bytes
    }

    // MARK: Steps

    private func perform(_ id: Int) {
        let chain = chains[id]!
        // Rows are read already separated as the body they go into wants them (no copy to make it).
        let separator = settings.current.batch.format == .ndjson ? UInt8(ascii: "\n") : UInt8(ascii: ",")
        if needsBytes(chain.step), !chain.records.holdsBytes, let batch = chain.batch {
            workers.submit { [self] reader in
                let (outcome, records) = Self.read(
                    reader, targetID: batch.targetID, from: batch.range.lowerBound, end: batch.range.upperBound,
                    maxRows: .max, maxBytes: .max, maxTagBytes: .max, primaryKey: nil, separator: separator, reusing: rowBuffers.take())
                guard case .read = outcome else { return post(.reread(chain: id, nil)) }
                post(.reread(chain: id, records))
            }
            return
        }
        switch chain.step {
        case .cut(let cut):
            reserve(id, bytes: expectedBytes(rows: min(cut.end - cut.from, Int64(cut.maxRows)), limit: cut.maxBytes))
            let primaryKey = cut.target.mode == .merge ? cut.target.primaryKey : nil
            workers.submit { [self] reader in
                let (outcome, records) = Self.read(
                    reader, targetID: cut.targetID, from: cut.from, end: cut.end, maxRows: cut.maxRows,
                    maxBytes: cut.maxBytes, maxTagBytes: cut.maxTagBytes, primaryKey: primaryKey, separator: separator,
                    reusing: rowBuffers.take())
                post(.read(chain: id, outcome, records))
            }
        case .load(let load):
            reserve(id, bytes: expectedBytes(rows: Int64(load.batch.range.count), limit: settings.current.batch.maxBytes.bytes))
            chains[id]!.batch = (load.targetID, load.batch.range)
            let primaryKey = load.target.mode == .merge ? load.target.primaryKey : nil
            workers.submit { [self] reader in
                let (outcome, records) = Self.read(
                    reader, targetID: load.targetID, from: load.batch.range.lowerBound,
                    end: load.batch.range.upperBound, maxRows: .max, maxBytes: .max, maxTagBytes: .max,
                    primaryKey: primaryKey, separator: separator, reusing: rowBuffers.take())
                post(.read(chain: id, outcome, records))
            }
        case .register(let record), .record(let record):
            if let batch = record.change.register { chains[id]!.batch = (record.change.targetID, batch.range) }
            ledger.apply(record.change, records: chain.records) { [self] result in post(.recorded(chain: id, result)) }
        case .send(let send):
            chains[id]!.saturated = chains.count >= concurrency.limit
            guard let apiKey = key.withLockedValue({ $0 }) else {
                post(.built(chain: id, .unsent(.missingKey)))
                return
            }
            let configuration = settings.current
            let records = chain.records
            let wait = confirmations?.awaits(targetID: send.targetID, seqs: send.seqs) ?? false
            workers.submit { [self] _ in
                post(
                    .built(
                        chain: id, Self.request(send, records: records, key: apiKey, host: host, wait: wait, configuration: configuration)))
            }
        }
    }

    /// Whether `step` needs the rows' bytes: to send them, or to copy them into dead letters.
    private func needsBytes(_ step: DeliveryMachine.Step) -> Bool {
        switch step {
        case .send: true
        case .record(let record), .register(let record): !record.change.deadLetters.isEmpty
        case .cut, .load: false
        }
    }

    private func retryRecords(now: DeliveryMachine.Now) {
        let due = retries.filter { $0.at <= now.instant }
        guard !due.isEmpty else { return }
        retries.removeAll { $0.at <= now.instant }
        for retry in due where chains[retry.chain] != nil { perform(retry.chain) }
    }

    private func pollIfDue(now: DeliveryMachine.Now) {
        guard !polling, now.instant - lastPoll >= Self.pollInterval else { return }
        polling = true
        lastPoll = now.instant
        workers.submit { [self] reader in
            post(.polled((try? reader.targets()) ?? []))
        }
    }

    /// Reads a batch's rows (and, for merge, each row's key) on a worker's connection.
    private static func read(
        _ reader: SpoolReader, targetID: Int64, from: Int64, end: Int64, maxRows: Int, maxBytes: Int,
        maxTagBytes: Int, primaryKey: String?, separator: UInt8, reusing buffer: consuming [UInt8]
    ) -> (DeliveryMachine.Outcome, SpooledRecords) {
        do {
            let (records, next) = try reader.read(
                targetID: targetID, from: from, end: end, maxRows: maxRows, maxBytes: maxBytes,
                maxTagBytes: maxTagBytes, separator: separator, reusing: consume buffer)
            var result = DeliveryMachine.ReadResult(seqs: records.seqs, next: next, bytes: records.bytes.count)
            if let first = records.seqs.first { result.oldestAppendedAt = try reader.appendedAt(targetID: targetID, seq: first) }
            if let primaryKey {
                result.keys = records.bytes.withUnsafeBytes { raw in
                    records.ranges.map { range in
                        RequestBody.keyValue(UnsafeRawBufferPointer(rebasing: raw[range]), primaryKey: primaryKey)
                            .map { records.bytes[(range.lowerBound + $0.lowerBound)..<(range.lowerBound + $0.upperBound)] }
                    }
                }
            }
            return (.read(result), records)
        } catch {
            return (.readFailed("\(error)"), SpooledRecords())
        }
    }

    /// The HTTP request for `send` (built on a worker: gzip is the costly part).
    private static func request(
        _ send: DeliveryMachine.Send, records: SpooledRecords, key: APIKey, host: String, wait: Bool,
        configuration: AgentConfiguration
    ) -> Built {
        // Usually every row read is sent: no search then.
        let indexes = send.seqs == records.seqs ? Array(records.seqs.indices) : send.seqs.compactMap(records.index(of:))
        guard indexes.count == send.seqs.count else {
            return .unsent(.noAnswer("the batch's rows could not be read back from the spool"))
        }
        var output: [UInt8] = []
        let body: RequestBody
        do {
            body = try RequestBody.make(
                records: records, indexes: indexes, target: send.target, batchID: send.batchID, host: host,
                format: configuration.batch.format, compression: configuration.batch.compression,
                gzipLevel: configuration.batch.gzipLevel, wait: wait, reusing: &output)
        } catch {
            return .unsent(.noAnswer("cannot compress the request: \(error)"))
        }
        AgentMetrics.bytesUncompressed.increment(by: Int64(indexes.reduce(0) { $0 + records.storedSize($1) }))
        var headers = ["Authorization: Bearer \(key.secret)", "Content-Type: \(body.contentType)", "Accept: application/json"]
        if body.compressed { headers.append("Content-Encoding: gzip") }
        let url = configuration.api.url
        return .request(
            HTTPRequest(
                url: body.query.isEmpty ? url : url + (url.contains("?") ? "&" : "?") + body.query,
                headers: headers, body: body.bytes,
                timeout: HumanDuration(milliseconds: configuration.api.timeout.milliseconds * Int64(send.patience))))
    }

    // MARK: Answers

    private func answered(_ completion: HTTPMultiClient.Completion) {
        guard chains[completion.id] != nil else { return }
        let now = Self.now()
        let outcome: DeliveryMachine.Outcome
        let signal: AdaptiveConcurrency.Signal
        switch completion.result {
        case .success(let response):
            AgentMetrics.deliveryLatency.recordNanoseconds(Int64(completion.elapsed.seconds * 1e9))
            AgentMetrics.httpRequests(String(response.status)).increment()
            let answer = StreamAPIResponse(body: response.body)
            if answer.snapshotID != nil { chains[completion.id]!.snapshotID = answer.snapshotID }
            outcome = .answered(status: response.status, answer: answer, retryAfter: response.retryAfter())
            signal = response.status == 429 || response.status >= 500 ? .backPressure : .answered
            logger.debug("request answered", metadata: ["status": "\(response.status)", "elapsed": "\(completion.elapsed)"])
        case .failure(let error):
            AgentMetrics.httpRequests("transport_error").increment()
            outcome = .noAnswer("\(error)", timedOut: error.timedOut)
            signal = .backPressure
        }
        concurrency.record(signal, roundTrip: completion.elapsed, saturated: chains[completion.id]!.saturated, now: now.instant)
        advance(completion.id, outcome, now: now)
    }

    /// Tells local requests waiting for these rows (`config.wait = true`) what became of them.
    private func settleWaiting(_ change: DeliveryLedger.Change, snapshotID: String?) {
        guard let confirmations else { return }
        let committed = change.delivered + change.superseded
        guard !committed.isEmpty || !change.deadLetters.isEmpty else { return }
        confirmations.settle(
            targetID: change.targetID, committed: committed, snapshotID: snapshotID, rejected: change.deadLetters)
    }

    /// Logs and counts what a recorded change did.
    private func report(_ change: DeliveryLedger.Change) {
        let table = machine.table(of: change.targetID) ?? "?"
        if !change.delivered.isEmpty { AgentMetrics.recordsDelivered.increment(by: Int64(change.delivered.count)) }
        for letter in change.deadLetters {
            AgentMetrics.recordsDeadLettered.increment(by: Int64(letter.seqs.count))
            logger.warning(
                "rows dead-lettered",
                metadata: [
                    "table": "\(table)", "rows": "\(letter.seqs.count)", "status": "\(letter.failure.status.map(String.init) ?? "none")",
                    "reason": "\(letter.failure.reason)",
                ])
        }
        let error = change.lastError ?? ""
        if let state = change.state?.kind, [.backingOff, .heldTableNotFound, .heldRefusingRows, .authFailing].contains(state) {
            // "delivery resumed" names the state it leaves, and the time since delivery first failed.
            failing[change.targetID] = (state, failing[change.targetID]?.since ?? .now)
        } else if change.succeededAt != nil, let failure = failing.removeValue(forKey: change.targetID) {
            logger.notice(
                "delivery resumed",
                metadata: [
                    "table": "\(table)", "after": "\(failure.state.rawValue)",
                    "for": "\((ContinuousClock.now - failure.since).seconds.fixed(1))s",
                ])
        }
        switch change.state {
        case .backingOff(let until)?:
            AgentMetrics.retries.increment()
            logOnce(
                change.targetID, "delivery failed; will retry",
                [
                    "table": "\(table)", "error": "\(error)", "retry_in": "\(max(0, until.timeIntervalSinceNow).fixed(3))s",
                ])
        case .authFailing?:
            logOnce(
                0,
                error == DeliveryMachine.missingKeyError
                    ? "no API key: delivery is paused, intake continues (set [api] key_file, $DEFINITE_API_KEY or the api-key credential)"
                    : "the Stream API refused the API key; delivery is paused for every table, intake continues", ["error": "\(error)"])
        case .heldTableNotFound?:
            logOnce(change.targetID, "table not found; holding this table, the others keep flowing", ["table": "\(table)"])
        case .heldRefusingRows?:
            logOnce(
                change.targetID, "the API refuses row after row for the same reason; holding this table, the others keep flowing",
                ["table": "\(table)", "error": "\(error)"])
        case .isolating? where !change.deadLetters.isEmpty || change.progress != nil:
            // The change that first says "isolating" may be the answer to a half that was written: the
            // refusal that started the search is the one its parts keep (the log said error="" mostly).
            let refusal = change.progress?.parts.lazy.compactMap(\.refusal).first
            let reason =
                refusal.map { "\($0.status.map { "HTTP \($0): " } ?? "")\($0.reason)" } ?? change.deadLetters.first?.failure.reason ?? error
            logOnce(
                change.targetID, "the API refused rows of a batch; isolating them while the rest is delivered",
                ["table": "\(table)", "error": "\(reason)"])
        default:
            break
        }
    }

    /// Logs a failure at most once per 30 s per target (0: all targets), so an outage is not a log flood.
    private func logOnce(_ targetID: Int64, _ message: Logger.Message, _ metadata: Logger.Metadata = [:]) {
        let now = ContinuousClock.now
        if let last = lastLogged[targetID], now - last < .seconds(30) { return }
        lastLogged[targetID] = now
        logger.warning(message, metadata: metadata)
    }
}

import Foundation
import Logging
import NIOConcurrencyHelpers

/// The API key delivery uses now; replaced on reload without a restart.
typealias APIKeyBox = NIOLockedValueBox<APIKey?>

/// One delivery thread: takes jobs from the ``DeliveryScheduler``, sends each batch with its own libcurl
/// handle, and turns every answer into the right action (see ``resolve(_:records:batch:)``).
final class DeliveryWorker {
    /// The end of one attempt at a batch (or part of one).
    enum Resolution {
        /// Every row of the part is delivered or dead-lettered.
        case resolved
        /// May succeed later: back off and send the batch again.
        case retry(status: Int?, error: String, retryAfter: Double?)
        case authFailed(status: Int, error: String)
        case tableNotFound(error: String)
    }

    private let scheduler: DeliveryScheduler
    private let reader: SpoolReader
    private let ledger: DeliveryLedger
    private let client: HTTPClient
    private let settings: LiveConfiguration
    /// The settings of the job at hand: a snapshot taken when the job starts.
    private var configuration: AgentConfiguration
    private let key: APIKeyBox
    private let logger: Logger
    private var policy: RetryPolicy
    private let host: String
    private let capacity: SpoolCapacity
    private var lastLogged: [Int64: ContinuousClock.Instant] = [:]

    init(scheduler: DeliveryScheduler, writer: SpoolWriter, settings: LiveConfiguration, key: APIKeyBox, logger: Logger) throws(SpoolError) {
        let configuration = settings.current
        self.settings = settings
        self.scheduler = scheduler
        self.reader = try SpoolReader(path: configuration.spool.path)
        self.ledger = DeliveryLedger(writer: writer)
        self.capacity = writer.capacity
        self.client = HTTPClient()
        self.configuration = configuration
        self.key = key
        self.logger = logger
        self.policy = RetryPolicy(configuration.retry)
        self.host = ProcessInfo.processInfo.hostName
    }

    func run() {
        while let job = scheduler.next() {
            configuration = settings.current
            policy = RetryPolicy(configuration.retry)
            switch job.kind {
            case .fresh(let from, let end):
                cutAndDeliver(job, from: from, end: end)
            case .noteMissingKey:
                do {
                    try ledger.setState(targetID: job.targetID, state: "auth failing", until: nil, lastError: "no API key configured")
                } catch {
                    logger.error("cannot record the delivery state", metadata: ["error": "\(error)"])
                }
                logOnce(0, "no API key: delivery is paused, intake continues (set [api] key_file, $DEFINITE_API_KEY or the api-key credential)")
                scheduler.finished(targetID: job.targetID, outcome: .done)
            case .retry(let batch):
                do {
                    let (records, _) = try reader.read(targetID: job.targetID, from: batch.firstSeq, end: batch.endSeq, maxRows: .max, maxBytes: .max)
                    scheduler.finished(targetID: job.targetID, outcome: deliver(job, batch: batch, records: records))
                } catch {
                    logger.error("cannot read a batch back from the spool", metadata: ["batch": "\(batch.id)", "error": "\(error)"])
                    scheduler.finished(targetID: job.targetID, outcome: .retry(batch, after: .seconds(1)))
                }
            }
        }
    }

    private func cutAndDeliver(_ job: DeliveryScheduler.Job, from: Int64, end: Int64) {
        let batch: SpoolReader.BatchRow
        let records: SpooledRecords
        do {
            let maxBytes = configuration.batch.maxBytes.bytes - RequestBody.envelopeAllowance
            let (read, next) = try reader.read(targetID: job.targetID, from: from, end: end, maxRows: configuration.batch.maxRows, maxBytes: maxBytes)
            guard next > from else {
                scheduler.cutFailed(targetID: job.targetID)
                return
            }
            batch = SpoolReader.BatchRow(id: Self.makeBatchID(), targetID: job.targetID, firstSeq: from, endSeq: next, attempts: 0)
            try ledger.register(batchID: batch.id, targetID: job.targetID, range: from..<next)
            records = read
        } catch {
            logger.error("cannot cut a batch from the spool", metadata: ["table": "\(job.target.table)", "error": "\(error)"])
            scheduler.cutFailed(targetID: job.targetID)
            return
        }
        scheduler.assigned(targetID: job.targetID, end: batch.endSeq)
        scheduler.finished(targetID: job.targetID, outcome: deliver(job, batch: batch, records: records))
    }

    /// A batch id that is unique across hosts and restarts: time, then randomness.
    static func makeBatchID() -> String {
        let millis = UInt64(Date().timeIntervalSince1970 * 1000)
        return "b" + String(millis, radix: 36) + "-" + String(UInt64.random(in: 0..<(1 << 50)), radix: 36)
    }

    // MARK: One batch

    private func deliver(_ job: DeliveryScheduler.Job, batch: SpoolReader.BatchRow, records: SpooledRecords) -> DeliveryScheduler.Outcome {
        let outcome = attempt(job, batch: batch, records: records)
        logger.debug("batch attempt ended", metadata: [
            "table": "\(job.target.table)", "batch": "\(batch.id)", "seqs": "\(batch.firstSeq)..<\(batch.endSeq)",
            "rows": "\(records.count)", "outcome": "\(outcome)"])
        return outcome
    }

    private func attempt(_ job: DeliveryScheduler.Job, batch: SpoolReader.BatchRow, records: SpooledRecords) -> DeliveryScheduler.Outcome {
        let finishing = (id: batch.id, range: batch.firstSeq..<batch.endSeq)
        do {
            if records.isEmpty {
                try ledger.delivered(targetID: job.targetID, seqs: [], bytes: 0, finishing: finishing)
                return .done
            }
            if let appended = try reader.appendedAt(targetID: job.targetID, seq: records.seqs[0]),
               Date().timeIntervalSince1970 - appended > configuration.retry.maxAge.seconds {
                try ledger.deadLetter(targetID: job.targetID, records: records, failure: .init(
                    reason: "expired: not delivered within retry.max_age (\(configuration.retry.maxAge))", status: nil,
                    errors: [], warnings: [], requestID: nil, attempts: batch.attempts, partial: false,
                    firstFailedAt: Date()), finishing: finishing)
                logger.warning("rows expired and were dead-lettered", metadata: ["table": "\(job.target.table)", "rows": "\(records.count)"])
                return .done
            }
            guard let apiKey = key.withLockedValue({ $0 }) else {
                try ledger.setState(targetID: job.targetID, state: "auth failing", until: nil, lastError: "no API key configured")
                logOnce(job.targetID, "no API key: delivery is paused, intake continues (set [api] key_file, $DEFINITE_API_KEY or the api-key credential)")
                return .authFailed(batch, after: policy.max.duration)
            }
            let indexes = job.target.mode == .merge
                ? RequestBody.lastWritePerKey(records, primaryKey: job.target.primaryKey)
                : Array(0..<records.count)
            let sent = indexes.reduce(0) { $0 + records.storedSize($1) }
            let context = Context(job: job, batch: batch, records: records, key: apiKey)
            let resolution = resolve(indexes, context: context)
            let attempts = batch.attempts + 1
            var next = batch
            next.attempts = attempts
            switch resolution {
            case .resolved:
                // Rows superseded by a later write of their key leave with the batch.
                try ledger.delivered(targetID: job.targetID, seqs: [], bytes: records.bytes.count - sent, finishing: finishing)
                capacity.release(records.bytes.count - sent)
                return .done
            case .retry(let status, let error, let retryAfter):
                AgentMetrics.retries.increment()
                let delay = retryAfter.map { Duration.milliseconds(Int64($0 * 1000)) } ?? policy.delay(attempt: attempts - 1)
                let until = Date().addingTimeInterval(Double(delay.components.seconds))
                try ledger.recordAttempt(batchID: batch.id, targetID: job.targetID, status: status, error: error,
                                         state: "backing off", stateUntil: until)
                logOnce(job.targetID, "delivery failed; will retry", ["table": "\(job.target.table)", "status": "\(status.map(String.init) ?? "none")",
                                                                      "error": "\(error)", "retry_in": "\(delay)"])
                return .retry(next, after: delay)
            case .authFailed(let status, let error):
                let delay = policy.delay(attempt: attempts + 3)
                try ledger.recordAttempt(batchID: batch.id, targetID: job.targetID, status: status, error: error,
                                         state: "auth failing", stateUntil: Date().addingTimeInterval(Double(delay.components.seconds)))
                logOnce(0, "the Stream API refused the API key; delivery is paused for every table, intake continues", ["status": "\(status)"])
                return .authFailed(next, after: delay)
            case .tableNotFound(let error):
                let delay = policy.delay(attempt: attempts + 3)
                try ledger.recordAttempt(batchID: batch.id, targetID: job.targetID, status: 404, error: error,
                                         state: "held: table not found", stateUntil: Date().addingTimeInterval(Double(delay.components.seconds)))
                logOnce(job.targetID, "table not found; holding this table, the others keep flowing", ["table": "\(job.target.table)"])
                return .retry(next, after: delay)
            }
        } catch {
            logOnce(-2, "delivery bookkeeping failed; the batch stays queued", ["error": "\(error)"])
            return .retry(batch, after: .seconds(1))
        }
    }

    private struct Context {
        var job: DeliveryScheduler.Job
        var batch: SpoolReader.BatchRow
        var records: SpooledRecords
        var key: APIKey
    }

    /// The last compressed body's buffer, reused so each batch does not allocate and fault in a new one.
    private var compressed: [UInt8] = []

    /// Sends `indexes` of the batch and acts on the answer. Parts the API refuses row by row are split in
    /// halves until each refused row stands alone and is dead-lettered; the rest are delivered.
    private func resolve(_ indexes: [Int], context: Context) -> Resolution {
        let job = context.job
        let body: RequestBody
        do {
            body = try RequestBody.make(
                records: context.records, indexes: indexes, target: job.target, batchID: context.batch.id, host: host,
                format: configuration.batch.format, compression: configuration.batch.compression, gzipLevel: configuration.batch.gzipLevel,
                reusing: &compressed)
        } catch {
            return .retry(status: nil, error: "cannot compress the request: \(error)", retryAfter: nil)
        }
        var headers = ["Authorization: Bearer \(context.key.secret)", "Content-Type: \(body.contentType)", "Accept: application/json"]
        if body.compressed { headers.append("Content-Encoding: gzip") }
        let url = body.query.isEmpty ? configuration.api.url : configuration.api.url + (configuration.api.url.contains("?") ? "&" : "?") + body.query
        let response: HTTPResponse
        let started = ContinuousClock.now
        AgentMetrics.bytesUncompressed.increment(by: Int64(indexes.reduce(0) { $0 + context.records.storedSize($1) }))
        AgentMetrics.bytesSent.increment(by: Int64(body.bytes.count))
        do {
            response = try client.post(url: url, headers: headers, body: body.bytes, timeout: configuration.api.timeout)
            AgentMetrics.deliveryLatency.recordInterval(since: started)
            AgentMetrics.httpRequests(String(response.status)).increment()
        } catch {
            AgentMetrics.httpRequests("transport_error").increment()
            return .retry(status: nil, error: "\(error)", retryAfter: nil)
        }
        let answer = StreamAPIResponse(body: response.body)
        let subset = { context.records.subset(indexes) }
        func deadLetter(_ reason: String, partial: Bool = false) -> Resolution {
            do {
                try ledger.deadLetter(targetID: job.targetID, records: subset(), failure: .init(
                    reason: reason, status: response.status, errors: answer.errors, warnings: answer.warnings,
                    requestID: answer.requestID, attempts: context.batch.attempts + 1, partial: partial, firstFailedAt: Date()),
                    finishing: nil)
                AgentMetrics.recordsDeadLettered.increment(by: Int64(indexes.count))
                logger.warning("rows dead-lettered", metadata: ["table": "\(job.target.table)", "rows": "\(indexes.count)",
                                                                "status": "\(response.status)", "reason": "\(reason)"])
                return .resolved
            } catch {
                return .retry(status: response.status, error: "cannot dead-letter: \(error)", retryAfter: nil)
            }
        }
        func split() -> Resolution {
            let middle = indexes.count / 2
            let first = resolve(Array(indexes[..<middle]), context: context)
            guard case .resolved = first else { return first }
            return resolve(Array(indexes[middle...]), context: context)
        }
        let error = answer.summary.isEmpty ? "HTTP \(response.status)" : "HTTP \(response.status): \(answer.summary)"
        switch response.status {
        case 200..<300:
            if answer.rejectedRows == 0 {
                let bytes = indexes.reduce(0) { $0 + context.records.storedSize($1) }
                // The API has these rows: record it, retrying the write alone (a full disk, a locked
                // spool) rather than sending them again.
                guard recordingPersistently({
                    try ledger.delivered(targetID: job.targetID, seqs: indexes.map { context.records.seqs[$0] }, bytes: bytes, finishing: nil)
                }) else {
                    return .retry(status: response.status, error: "delivered, but the agent stopped before it could record it", retryAfter: nil)
                }
                capacity.release(bytes)
                AgentMetrics.recordsDelivered.increment(by: Int64(indexes.count))
                return .resolved
            }
            if job.target.mode == .merge {
                // Upserts are idempotent: resend halves to find the rejected rows.
                return indexes.count > 1 ? split() : deadLetter("rejected by the API (\(answer.summary))")
            }
            // Re-sending would duplicate the rows that were written: keep the whole batch, marked partial.
            return deadLetter("partially rejected: \(answer.rejectedRows) of \(indexes.count) rows rejected, the others were written (request \(answer.requestID ?? "?"))", partial: true)
        case 400:
            return indexes.count > 1 ? split() : deadLetter("rejected by the API: \(answer.summary)")
        case 413:
            return indexes.count > 1 ? split() : deadLetter("too large for the API even alone: \(answer.summary)")
        case 422:
            return deadLetter("the API refused the request as invalid: \(answer.summary)")
        case 401, 403:
            return .authFailed(status: response.status, error: error)
        case 404:
            return .tableNotFound(error: error)
        default:
            return .retry(status: response.status, error: error, retryAfter: response.retryAfter())
        }
    }

    /// Runs a spool write until it succeeds, pausing between attempts; `false` only if the daemon is
    /// stopping first. For bookkeeping whose failure must not lead to sending rows again.
    private func recordingPersistently(_ write: () throws -> Void) -> Bool {
        while true {
            do {
                try write()
                return true
            } catch {
                logOnce(-1, "cannot record a delivery in the spool; retrying the write (the rows are not sent again)", ["error": "\(error)"])
                if scheduler.isStopping { return false }
                Thread.sleep(forTimeInterval: 1)
            }
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

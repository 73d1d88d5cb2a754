import Foundation
import Logging
import NIOConcurrencyHelpers

/// The API key delivery uses now; replaced on reload without a restart.
typealias APIKeyBox = NIOLockedValueBox<APIKey?>

/// One delivery thread: a thin loop that asks the ``DeliveryScheduler`` for a step, does its I/O (a spool
/// read, a spool transaction, an HTTP request with its own libcurl handle) and hands back what happened.
/// Every decision is the ``DeliveryMachine``'s; this type only performs steps, logs and counts.
final class DeliveryWorker {
    private let scheduler: DeliveryScheduler
    private let reader: SpoolReader
    private let ledger: DeliveryLedger
    private let client: HTTPClient
    private let settings: LiveConfiguration
    private let key: APIKeyBox
    private let logger: Logger
    private let host: String
    private let capacity: SpoolCapacity
    private var lastLogged: [Int64: ContinuousClock.Instant] = [:]
    /// Table names of the targets this worker has handled, for its log lines.
    private var tables: [Int64: String] = [:]
    /// The last compressed body's buffer, reused so each request does not allocate and fault in a new one.
    private var compressed: [UInt8] = []

    init(scheduler: DeliveryScheduler, writer: SpoolWriter, settings: LiveConfiguration, key: APIKeyBox, logger: Logger) throws(SpoolError) {
        self.settings = settings
        self.scheduler = scheduler
        self.reader = try SpoolReader(path: settings.current.spool.path)
        self.ledger = DeliveryLedger(writer: writer)
        self.capacity = writer.capacity
        self.client = HTTPClient()
        self.key = key
        self.logger = logger
        self.host = ProcessInfo.processInfo.hostName
    }

    func run() {
        while let first = scheduler.next() {
            // The rows of the batch this worker holds, from its cut or load until the machine lets it go.
            var records = SpooledRecords()
            var step: DeliveryMachine.Step? = first
            while let current = step {
                let outcome = perform(current, records: &records)
                step = scheduler.complete(current, with: outcome)
            }
        }
    }

    private func perform(_ step: DeliveryMachine.Step, records: inout SpooledRecords) -> DeliveryMachine.Outcome {
        switch step {
        case .cut(let cut):
            tables[cut.targetID] = cut.target.table
            return read(targetID: cut.targetID, table: cut.target.table, from: cut.from, end: cut.end, maxRows: cut.maxRows,
                        maxBytes: cut.maxBytes, keys: cut.target.mode == .merge ? cut.target.primaryKey : nil, into: &records)
        case .load(let load):
            tables[load.targetID] = load.target.table
            return read(targetID: load.targetID, table: load.target.table, from: load.batch.range.lowerBound, end: load.batch.range.upperBound,
                        maxRows: .max, maxBytes: .max, keys: load.target.mode == .merge ? load.target.primaryKey : nil, into: &records)
        case .register(let record):
            do {
                capacity.release(try ledger.apply(record.change, records: records))
                return .recorded
            } catch {
                logOnce(-2, "cannot register a batch in the spool; its rows stay queued and are cut again", ["error": "\(error)"])
                return .notRecorded("\(error)")
            }
        case .record(let record):
            return recordPersistently(record.change, records: records)
        case .send(let send):
            return post(send, records: records)
        }
    }

    // MARK: Reading

    private func read(targetID: Int64, table: String?, from: Int64, end: Int64, maxRows: Int, maxBytes: Int, keys primaryKey: String?,
                      into records: inout SpooledRecords) -> DeliveryMachine.Outcome {
        do {
            let (read, next) = try reader.read(targetID: targetID, from: from, end: end, maxRows: maxRows, maxBytes: maxBytes)
            records = read
            var result = DeliveryMachine.ReadResult(seqs: read.seqs, next: next)
            if let first = read.seqs.first { result.oldestAppendedAt = try reader.appendedAt(targetID: targetID, seq: first) }
            if let primaryKey {
                result.keys = read.bytes.withUnsafeBytes { raw in
                    read.ranges.map { range in
                        RequestBody.keyValue(UnsafeRawBufferPointer(rebasing: raw[range]), primaryKey: primaryKey)
                            .map { read.bytes[(range.lowerBound + $0.lowerBound)..<(range.lowerBound + $0.upperBound)] }
                    }
                }
            }
            return .read(result)
        } catch {
            logOnce(-3, "cannot read a batch from the spool; retrying shortly", ["table": "\(table ?? "?")", "error": "\(error)"])
            return .readFailed("\(error)")
        }
    }

    // MARK: Recording

    /// Commits a change, retrying the write alone (a full disk, a locked spool) until it succeeds or the
    /// daemon stops: it may hold rows the API has, which must not be sent again.
    private func recordPersistently(_ change: DeliveryLedger.Change, records: SpooledRecords) -> DeliveryMachine.Outcome {
        while true {
            do {
                capacity.release(try ledger.apply(change, records: records))
                report(change)
                return .recorded
            } catch {
                logOnce(-1, "cannot record a delivery in the spool; retrying the write (the rows are not sent again)", ["error": "\(error)"])
                if scheduler.isStopping { return .notRecorded("\(error)") }
                Thread.sleep(forTimeInterval: 1)
            }
        }
    }

    /// Logs and counts what a recorded change did.
    private func report(_ change: DeliveryLedger.Change) {
        let table = tables[change.targetID] ?? "?"
        if !change.delivered.isEmpty { AgentMetrics.recordsDelivered.increment(by: Int64(change.delivered.count)) }
        for letter in change.deadLetters {
            AgentMetrics.recordsDeadLettered.increment(by: Int64(letter.seqs.count))
            logger.warning("rows dead-lettered", metadata: [
                "table": "\(table)", "rows": "\(letter.seqs.count)", "status": "\(letter.failure.status.map(String.init) ?? "none")",
                "reason": "\(letter.failure.reason)"])
        }
        let error = change.lastError ?? ""
        switch change.state {
        case .backingOff(let until)?:
            AgentMetrics.retries.increment()
            logOnce(change.targetID, "delivery failed; will retry", [
                "table": "\(table)", "error": "\(error)", "retry_in": "\(String(format: "%.3fs", max(0, until.timeIntervalSinceNow)))"])
        case .authFailing?:
            logOnce(0, error == DeliveryMachine.missingKeyError
                ? "no API key: delivery is paused, intake continues (set [api] key_file, $DEFINITE_API_KEY or the api-key credential)"
                : "the Stream API refused the API key; delivery is paused for every table, intake continues", ["error": "\(error)"])
        case .heldTableNotFound?:
            logOnce(change.targetID, "table not found; holding this table, the others keep flowing", ["table": "\(table)"])
        case .isolating? where !change.deadLetters.isEmpty || change.progress != nil:
            logOnce(change.targetID, "the API refused rows of a batch; isolating them while the rest is delivered",
                    ["table": "\(table)", "error": "\(error)"])
        default:
            break
        }
    }

    // MARK: Sending

    private func post(_ send: DeliveryMachine.Send, records: SpooledRecords) -> DeliveryMachine.Outcome {
        let configuration = settings.current
        guard let apiKey = key.withLockedValue({ $0 }) else { return .missingKey }
        let indexes = send.seqs.compactMap(records.index(of:))
        guard indexes.count == send.seqs.count else { return .noAnswer("the batch's rows could not be read back from the spool") }
        let body: RequestBody
        do {
            body = try RequestBody.make(
                records: records, indexes: indexes, target: send.target, batchID: send.batchID, host: host,
                format: configuration.batch.format, compression: configuration.batch.compression, gzipLevel: configuration.batch.gzipLevel,
                reusing: &compressed)
        } catch {
            return .noAnswer("cannot compress the request: \(error)")
        }
        var headers = ["Authorization: Bearer \(apiKey.secret)", "Content-Type: \(body.contentType)", "Accept: application/json"]
        if body.compressed { headers.append("Content-Encoding: gzip") }
        let url = configuration.api.url
        let target = body.query.isEmpty ? url : url + (url.contains("?") ? "&" : "?") + body.query
        AgentMetrics.bytesUncompressed.increment(by: Int64(indexes.reduce(0) { $0 + records.storedSize($1) }))
        AgentMetrics.bytesSent.increment(by: Int64(body.bytes.count))
        let started = ContinuousClock.now
        do {
            let response = try client.post(url: target, headers: headers, body: body.bytes, timeout: configuration.api.timeout)
            AgentMetrics.deliveryLatency.recordInterval(since: started)
            AgentMetrics.httpRequests(String(response.status)).increment()
            logger.debug("request answered", metadata: [
                "table": "\(send.target.table)", "batch": "\(send.batchID)", "rows": "\(send.seqs.count)", "status": "\(response.status)"])
            return .answered(status: response.status, answer: StreamAPIResponse(body: response.body), retryAfter: response.retryAfter())
        } catch {
            AgentMetrics.httpRequests("transport_error").increment()
            return .noAnswer("\(error)")
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

import Core
import Dispatch
import FoundationEssentials
import Glibc
import Synchronization

/// The spool writes delivery makes: each ``Change`` is one transaction on the writer thread
/// (``SpoolWriter/perform``), so delivery bookkeeping and intake commits never interleave half-way.
///
/// - Important: Records leave the queue only here, and only in the same transaction that records why
///   (delivered, dead-lettered with the reason, or superseded by a later write of their merge key in the
///   same batch). A crash before the commit leaves them queued; they are sent again (at-least-once).
package struct DeliveryLedger: Sendable {
    package let writer: SpoolWriter

    /// A batch: fixed (id and seq range) before its first attempt, so every retry, even after a restart,
    /// sends the same rows under the same id.
    package struct Batch: Sendable, Equatable {
        package var id: String
        package var range: Range<Int64>

        package init(id: String, range: Range<Int64>) {
            self.id = id
            self.range = range
        }
    }

    /// What is known about a failure, copied into the dead letter.
    package struct Failure: Sendable, Equatable {
        package var reason: String
        package var status: Int?
        package var errors: [String]
        package var warnings: [String]
        package var requestID: String?
        package var attempts: Int
        /// The entry holds rows the API wrote as well as the ones it rejected (an append batch answered
        /// 200 with rejected rows it did not name): replaying it would write those again.
        package var partial: Bool
        package var firstFailedAt: Date

        package init(
            reason: String, status: Int? = nil, errors: [String], warnings: [String], requestID: String? = nil, attempts: Int,
            partial: Bool, firstFailedAt: Date
        ) {
            self.reason = reason
            self.status = status
            self.errors = errors
            self.warnings = warnings
            self.requestID = requestID
            self.attempts = attempts
            self.partial = partial
            self.firstFailedAt = firstFailedAt
        }
    }

    /// Rows that leave the queue for the dead-letter queue, as one entry.
    package struct DeadLetter: Sendable, Equatable {
        package var seqs: [Int64]
        package var failure: Failure

        /// How many of `seqs` the API wrote without saying which (``Failure/partial``); not stored, for the
        /// requests that wait for the rows (``RemoteConfirmations``).
        package var writtenUnnamed: Int

        package init(seqs: [Int64], failure: Failure, writtenUnnamed: Int = 0) {
            self.seqs = seqs
            self.failure = failure
            self.writtenUnnamed = writtenUnnamed
        }
    }

    /// Why a part of a batch is known to hold a row the API refuses: the answer that showed it.
    package struct Refusal: Sendable, Equatable {
        package var status: Int?
        package var reason: String
        package var errors: [String]
        package var requestID: String?

        package init(status: Int? = nil, reason: String, errors: [String], requestID: String? = nil) {
            self.status = status
            self.reason = reason
            self.errors = errors
            self.requestID = requestID
        }
    }

    /// A part of a batch still to be resolved. The parts of a batch being isolated are kept in the spool,
    /// so that a restart resumes the search where it was instead of starting from the whole batch.
    package struct Part: Sendable, Equatable {
        package var range: Range<Int64>
        /// Set when the part is known to hold at least one row the API refuses; `nil` when it may well be
        /// good (it is sent whole).
        package var refusal: Refusal?

        package init(range: Range<Int64>, refusal: Refusal? = nil) {
            self.range = range
            self.refusal = refusal
        }
    }

    /// The parts of a batch still to be resolved.
    package struct Progress: Sendable, Equatable {
        package var batchID: String
        package var parts: [Part]

        package init(batchID: String, parts: [Part]) {
            self.batchID = batchID
            self.parts = parts
        }
    }

    /// The last attempt at a batch, for `queue peek` and `status`.
    package struct Attempt: Sendable, Equatable {
        package var batchID: String
        package var status: Int?
        package var error: String

        package init(batchID: String, status: Int? = nil, error: String) {
            self.batchID = batchID
            self.status = status
            self.error = error
        }
    }

    /// Everything one step of delivery changes in the spool, committed together.
    ///
    /// A batch costs two commits when all goes well: its registration (the rows and id must be fixed
    /// before they are sent, or a retry after a crash could send other rows under another id) and its
    /// outcome (rows delivered, batch closed). Each further answer (a retry, a step of isolation) is one more.
    package struct Change: Sendable, Equatable {
        package var targetID: Int64
        /// A new batch, registered before its first attempt.
        package var register: Batch?
        /// Rows that leave the queue because the API has them.
        package var delivered: [Int64] = []
        /// Rows that leave the queue unsent because a later write of their merge key in the same batch
        /// supersedes them (upserts in order would overwrite them anyway).
        package var superseded: [Int64] = []
        package var deadLetters: [DeadLetter] = []
        /// The parts of a batch still to be resolved, replacing those recorded before.
        package var progress: Progress?
        /// The batch is resolved: its record and parts go, and every row of its range leaves the queue.
        package var finished: Batch?
        package var attempt: Attempt?
        /// The target's new state; `nil` leaves it as it is.
        package var state: TargetState?
        /// The target's last error; `nil` leaves it as it is.
        package var lastError: String?
        /// When set, the target's last success; also clears its last error (unless `lastError` is set).
        package var succeededAt: Date?

        package init(targetID: Int64) {
            self.targetID = targetID
        }

        /// Whether the change writes nothing.
        package var isEmpty: Bool { self == Change(targetID: targetID) }
    }

    /// Queues `change` on the writer thread; `completion` (on that thread) hears once it is committed, or
    /// why it was not. `records` must hold every row the change moves (for the dead-letter copies).
    ///
    /// The spool's capacity follows the commit exactly: what the transaction changed in the stored total
    /// (segments delivery has wholly passed leave it, dead letters join it) is applied once it is durable,
    /// on the writer thread, before `completion` runs; a failed commit changes nothing.
    package func apply(_ change: Change, records: SpooledRecords, completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let storedChange = LockedResult(0)
        let (capacity, path) = (writer.capacity, writer.path)
        writer.perform(
            { db in
                let letters = try change.deadLetters.map { letter in
                    let indexes = letter.seqs.compactMap(records.index(of:))
                    // A row leaving the queue as a dead letter must leave with its copy: never one without the other.
                    guard indexes.count == letter.seqs.count else {
                        throw SpoolError(
                            .storage, path: path,
                            "\(letter.seqs.count - indexes.count) rows to dead-letter were not among the rows read; nothing was recorded")
                    }
                    return (letter, records.subset(indexes))
                }
                storedChange.set(.success(try Self.write(change, letters: letters, db: db)))
            },
            completion: { outcome in
                completion(
                    outcome.flatMap {
                        storedChange.get().map { capacity.storedChanged(by: $0) }
                    })
            })
    }

    /// ``apply(_:records:completion:)`` for synchronous callers (tests, tools): blocks until committed.
    package func apply(_ change: Change, records: SpooledRecords) throws {
        let done = DispatchSemaphore(value: 0)
        let result = LockedResult<Void>(())
        apply(change, records: records) { outcome in
            result.set(outcome)
            done.signal()
        }
        done.wait()
        try result.get().get()
    }

    // MARK: SQL

    /// Writes `change`; returns what it changed in the spool's stored total (bytes).
    private static func write(_ change: Change, letters: [(DeadLetter, SpooledRecords)], db: SQLiteConnection) throws -> Int {
        let targetID = change.targetID
        let now = Date().timeIntervalSince1970
        if let batch = change.register {
            let insert = try db.prepared("INSERT INTO batches (id, target_id, first_seq, end_seq, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            insert.bind(1, batch.id)
            insert.bind(2, targetID)
            insert.bind(3, batch.range.lowerBound)
            insert.bind(4, batch.range.upperBound)
            insert.bind(5, now)
            try insert.step()
            insert.reset()
        }
        var storedChange = 0
        var leaving = runs(of: change.delivered + change.superseded)
        for (letter, rows) in letters {
            storedChange += try insertDeadLetter(letter.failure, rows: rows, targetID: targetID, now: now, db: db)
            leaving += runs(of: letter.seqs)
        }
        if let batch = change.finished {
            // Rows of the range never sent (superseded by a later write of their key) leave too.
            leaving.append(batch.range)
            try replaceParts(batchID: batch.id, with: [], db: db)
            let delete = try db.prepared("DELETE FROM batches WHERE id = ?1")
            delete.bind(1, batch.id)
            try delete.step()
            delete.reset()
        } else if let progress = change.progress {
            try replaceParts(batchID: progress.batchID, with: progress.parts, db: db)
        }
        if !leaving.isEmpty {
            storedChange -= try markDelivered(db, targetID: targetID, ranges: leaving)
        }
        if let attempt = change.attempt {
            let update = try db.prepared(
                "UPDATE batches SET attempts = attempts + 1, last_attempt_at = ?2, last_status = ?3, last_error = ?4 WHERE id = ?1")
            update.bind(1, attempt.batchID)
            update.bind(2, now)
            update.bind(3, attempt.status)
            update.bind(4, attempt.error)
            try update.step()
            update.reset()
        }
        try updateTarget(change, db: db)
        return storedChange
    }

    /// Returns the entry's bytes (what it adds to the stored total).
    ///
    /// Entry ids are never given twice: each is one more than any the spool ever gave (the highest kept in
    /// `counters` as `dead_letters_last_id`), not one more than the highest still there. An operator acts on
    /// ids from an earlier `dlq list`: after a purge or replay of the last entry, the next dead letter (of
    /// another table, say) took its id, and `dlq purge --id` with the old listing deleted it.
    private static func insertDeadLetter(_ failure: Failure, rows: SpooledRecords, targetID: Int64, now: Double, db: SQLiteConnection)
        throws -> Int
    {
        let insert = try db.prepared(
            """
            INSERT INTO dead_letters (id, target_id, first_seq, record_count, byte_count, records, reason, http_status, errors,
                                      warnings, request_id, attempts, partial, first_failed_at, last_failed_at, tags)
            VALUES (1 + max(coalesce((SELECT max(id) FROM dead_letters), 0),
                            coalesce((SELECT value FROM counters WHERE name = 'dead_letters_last_id'), 0)),
                    ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
            """)
        let remember = try db.prepared(
            """
            INSERT INTO counters (name, value) VALUES ('dead_letters_last_id', last_insert_rowid())
            ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)
            """)
        insert.bind(1, targetID)
        insert.bind(2, rows.seqs.first ?? 0)
        insert.bind(3, rows.count)
        insert.bind(4, rows.bytes.count)
        insert.bind(6, failure.reason)
        insert.bind(7, failure.status)
        insert.bind(8, jsonArray(failure.errors))
        insert.bind(9, jsonArray(failure.warnings))
        insert.bind(10, failure.requestID)
        insert.bind(11, failure.attempts)
        insert.bind(12, failure.partial ? 1 : 0)
        insert.bind(13, failure.firstFailedAt.timeIntervalSince1970)
        insert.bind(14, now)
        insert.bind(15, rows.tagRunsJSON)
        try rows.newlineSeparated.withUnsafeBytes { raw in
            insert.bindBlobNoCopy(5, raw)
            try insert.step()
            insert.reset()
        }
        try remember.step()
        remember.reset()
        return rows.bytes.count
    }

    private static func replaceParts(batchID: String, with parts: [Part], db: SQLiteConnection) throws {
        let delete = try db.prepared("DELETE FROM batch_parts WHERE batch_id = ?1")
        delete.bind(1, batchID)
        try delete.step()
        delete.reset()
        let insert = try db.prepared(
            """
            INSERT INTO batch_parts (batch_id, first_seq, end_seq, refused, status, reason, errors, request_id)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
            """)
        for part in parts {
            insert.bind(1, batchID)
            insert.bind(2, part.range.lowerBound)
            insert.bind(3, part.range.upperBound)
            insert.bind(4, part.refusal == nil ? 0 : 1)
            insert.bind(5, part.refusal?.status)
            insert.bind(6, part.refusal?.reason)
            insert.bind(7, part.refusal.map { jsonArray($0.errors) })
            insert.bind(8, part.refusal?.requestID)
            try insert.step()
            insert.reset()
        }
    }

    private static func updateTarget(_ change: Change, db: SQLiteConnection) throws {
        if let state = change.state {
            let stored: String? =
                switch state {
                case .idle, .delivering: nil
                default: state.kind.rawValue
                }
            let update = try db.prepared("UPDATE targets SET state = ?2, state_until = ?3 WHERE id = ?1")
            update.bind(1, change.targetID)
            update.bind(2, stored)
            if let until = state.until { update.bind(3, until.timeIntervalSince1970) } else { update.bind(3, nil as String?) }
            try update.step()
            update.reset()
        }
        if let succeededAt = change.succeededAt {
            let update = try db.prepared("UPDATE targets SET last_success_at = ?2, last_error = NULL WHERE id = ?1")
            update.bind(1, change.targetID)
            update.bind(2, succeededAt.timeIntervalSince1970)
            try update.step()
            update.reset()
        }
        if let lastError = change.lastError {
            let update = try db.prepared("UPDATE targets SET last_error = ?2 WHERE id = ?1")
            update.bind(1, change.targetID)
            update.bind(2, lastError)
            try update.step()
            update.reset()
        }
    }

    /// `ranges` as disjoint ranges in order, overlapping or touching ones joined; empty ones left out.
    static func disjointUnion(_ ranges: [Range<Int64>]) -> [Range<Int64>] {
        var union: [Range<Int64>] = []
        for range in ranges.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = union.last, range.lowerBound <= last.upperBound {
                union[union.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                union.append(range)
            }
        }
        return union
    }

    private static func jsonArray(_ items: [String]) -> String {
        JSONCompactor.render(.array(items.map(JSONValue.string)))
    }

    /// Adds delivered ranges, folds those contiguous with `delivered_seq` into it, and drops segments
    /// that are wholly behind it; returns the bytes of those segments.
    ///
    /// The ranges stay disjoint: one that overlaps or touches ranges already there (a finished batch's
    /// whole range after the runs its rows left in) absorbs them, so the rows left, which `status` counts
    /// as the ranges' total length, are counted once.
    @discardableResult
    static func markDelivered(_ db: SQLiteConnection, targetID: Int64, ranges: [Range<Int64>]) throws -> Int {
        let overlapping = try db.prepared(
            "SELECT first_seq, end_seq FROM delivered_ranges WHERE target_id = ?1 AND first_seq <= ?3 AND end_seq >= ?2")
        let removeRange = try db.prepared("DELETE FROM delivered_ranges WHERE target_id = ?1 AND first_seq = ?2")
        let insert = try db.prepared("INSERT INTO delivered_ranges (target_id, first_seq, end_seq) VALUES (?1, ?2, ?3)")
        for range in disjointUnion(ranges) {
            var merged = range
            overlapping.bind(1, targetID)
            overlapping.bind(2, range.lowerBound)
            overlapping.bind(3, range.upperBound)
            var absorbed: [Int64] = []
            while try overlapping.step() {
                let (first, end) = (overlapping.int64(0), overlapping.int64(1))
                merged = min(merged.lowerBound, first)..<max(merged.upperBound, end)
                absorbed.append(first)
            }
            overlapping.reset()
            for first in absorbed {
                removeRange.bind(1, targetID)
                removeRange.bind(2, first)
                try removeRange.step()
                removeRange.reset()
            }
            insert.bind(1, targetID)
            insert.bind(2, merged.lowerBound)
            insert.bind(3, merged.upperBound)
            try insert.step()
            insert.reset()
        }
        let position = try db.prepared("SELECT delivered_seq, next_seq, pending_bytes FROM targets WHERE id = ?1")
        position.bind(1, targetID)
        guard try position.step() else { return 0 }
        var delivered = position.int64(0)
        let settledBelow = position.int64(1)
        let pendingBytes = position.int(2)
        position.reset()
        let candidates = try db.prepared("SELECT first_seq, end_seq FROM delivered_ranges WHERE target_id = ?1 ORDER BY first_seq")
        candidates.bind(1, targetID)
        var folded: [Int64] = []
        while try candidates.step() {
            let (first, end) = (candidates.int64(0), candidates.int64(1))
            if first > delivered { break }
            delivered = max(delivered, end)
            folded.append(first)
        }
        candidates.reset()
        let remove = try db.prepared("DELETE FROM delivered_ranges WHERE target_id = ?1 AND first_seq = ?2")
        for first in folded {
            remove.bind(1, targetID)
            remove.bind(2, first)
            try remove.step()
            remove.reset()
        }
        let removed = try TargetLog.removeSegments(of: targetID, below: delivered, settledBelow: settledBelow, db: db)
        // `pending_bytes` never goes below 0 (it would only if it had been wrong before); what the stored
        // total loses is what this update takes off it, plus the removed segments it did not count.
        let advance = try db.prepared("UPDATE targets SET delivered_seq = ?2, pending_bytes = max(0, pending_bytes - ?3) WHERE id = ?1")
        advance.bind(1, targetID)
        advance.bind(2, delivered)
        advance.bind(3, removed.counted)
        try advance.step()
        advance.reset()
        return removed.removed - removed.counted + min(removed.counted, pendingBytes)
    }

    /// Sorted seqs as contiguous ranges.
    package static func runs(of seqs: [Int64]) -> [Range<Int64>] {
        var result: [Range<Int64>] = []
        let ascending = zip(seqs, seqs.dropFirst()).allSatisfy { $0 < $1 }
        for seq in ascending ? seqs : seqs.sorted() {
            if let last = result.last, last.upperBound == seq {
                result[result.count - 1] = last.lowerBound..<(seq + 1)
            } else if result.last?.contains(seq) != true {
                result.append(seq..<(seq + 1))
            }
        }
        return result
    }

    package init(writer: SpoolWriter) {
        self.writer = writer
    }
}

/// A result handed from the writer thread to whoever waits for it.
private final class LockedResult<Value: Sendable>: Sendable {
    private let result: Mutex<Result<Value, any Error>>
    init(_ initial: Value) { result = Mutex(.success(initial)) }
    func set(_ value: Result<Value, any Error>) { result.withLock { $0 = value } }
    func get() -> Result<Value, any Error> { result.withLock { $0 } }
}

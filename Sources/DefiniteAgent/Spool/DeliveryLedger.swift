import Foundation

/// The spool writes delivery makes, each one transaction on the writer thread (``SpoolWriter/perform``),
/// so delivery bookkeeping and intake commits never interleave half-way.
///
/// - Important: Records leave the queue only here, and only in the same transaction that records why
///   (delivered with the API's request id, or dead-lettered with the reason). A crash before the commit
///   leaves them queued; they are sent again (at-least-once).
struct DeliveryLedger: Sendable {
    let writer: SpoolWriter

    /// Runs `body` on the writer thread and waits for its commit.
    private func transaction(_ body: @escaping @Sendable (SQLiteConnection) throws -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        let result = NIOLockedResult()
        writer.perform(body) { outcome in
            result.set(outcome)
            done.signal()
        }
        done.wait()
        try result.get()
    }

    /// Fixes a batch's range and id before its first attempt.
    func register(batchID: String, targetID: Int64, range: Range<Int64>) throws {
        try transaction { db in
            let insert = try db.prepared("INSERT INTO batches (id, target_id, first_seq, end_seq, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            insert.bind(1, batchID)
            insert.bind(2, targetID)
            insert.bind(3, range.lowerBound)
            insert.bind(4, range.upperBound)
            insert.bind(5, Date().timeIntervalSince1970)
            try insert.step()
            insert.reset()
        }
    }

    /// Notes one attempt of a batch and its result, for `queue peek` and `status`.
    func recordAttempt(batchID: String, targetID: Int64, status: Int?, error: String?, state: String?, stateUntil: Date?) throws {
        try transaction { db in
            let now = Date().timeIntervalSince1970
            let update = try db.prepared("UPDATE batches SET attempts = attempts + 1, last_attempt_at = ?2, last_status = ?3, last_error = ?4 WHERE id = ?1")
            update.bind(1, batchID)
            update.bind(2, now)
            update.bind(3, status)
            update.bind(4, error)
            try update.step()
            update.reset()
            try Self.setState(db, targetID: targetID, state: state, until: stateUntil, lastError: error)
        }
    }

    /// Marks records delivered: `seqs` leave the queue, with the bytes they held.
    /// When `finishing` is set, the whole batch range is closed too (rows merged away by dedupe included).
    func delivered(targetID: Int64, seqs: [Int64], bytes: Int, finishing batch: (id: String, range: Range<Int64>)?) throws {
        try transaction { db in
            try Self.markDelivered(db, targetID: targetID, ranges: Self.runs(of: seqs), bytes: bytes)
            if let batch { try Self.finish(db, targetID: targetID, batch: batch) }
            let success = try db.prepared("UPDATE targets SET last_success_at = ?2, last_error = NULL, state = NULL, state_until = NULL WHERE id = ?1")
            success.bind(1, targetID)
            success.bind(2, Date().timeIntervalSince1970)
            try success.step()
            success.reset()
        }
    }

    /// What is known about a failure, copied into the dead letter.
    struct Failure: Sendable {
        var reason: String
        var status: Int?
        var errors: [String]
        var warnings: [String]
        var requestID: String?
        var attempts: Int
        var partial: Bool
        var firstFailedAt: Date
    }

    /// Moves records to the dead-letter queue as one entry; they leave the queue in the same transaction.
    func deadLetter(targetID: Int64, records: SpooledRecords, failure: Failure, finishing batch: (id: String, range: Range<Int64>)?) throws {
        try transaction { db in
            let insert = try db.prepared("""
                INSERT INTO dead_letters (target_id, first_seq, record_count, byte_count, records, reason, http_status, errors,
                                          warnings, request_id, attempts, partial, first_failed_at, last_failed_at)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                """)
            insert.bind(1, targetID)
            insert.bind(2, records.seqs.first ?? 0)
            insert.bind(3, records.count)
            insert.bind(4, records.bytes.count)
            insert.bind(6, failure.reason)
            insert.bind(7, failure.status)
            insert.bind(8, JSONCompactor.render(.array(failure.errors.map(JSONValue.string))))
            insert.bind(9, JSONCompactor.render(.array(failure.warnings.map(JSONValue.string))))
            insert.bind(10, failure.requestID)
            insert.bind(11, failure.attempts)
            insert.bind(12, failure.partial ? 1 : 0)
            insert.bind(13, failure.firstFailedAt.timeIntervalSince1970)
            insert.bind(14, Date().timeIntervalSince1970)
            try records.newlineSeparated.withUnsafeBytes { raw in
                insert.bindBlobNoCopy(5, raw)
                try insert.step()
                insert.reset()
            }
            try Self.markDelivered(db, targetID: targetID, ranges: Self.runs(of: records.seqs), bytes: records.bytes.count)
            if let batch { try Self.finish(db, targetID: targetID, batch: batch) }
        }
    }

    /// Records the target's delivery state for `status`.
    func setState(targetID: Int64, state: String?, until: Date?, lastError: String?) throws {
        try transaction { db in try Self.setState(db, targetID: targetID, state: state, until: until, lastError: lastError) }
    }

    // MARK: SQL

    private static func setState(_ db: SQLiteConnection, targetID: Int64, state: String?, until: Date?, lastError: String?) throws {
        let update = try db.prepared("UPDATE targets SET state = ?2, state_until = ?3, last_error = coalesce(?4, last_error) WHERE id = ?1")
        update.bind(1, targetID)
        update.bind(2, state)
        if let until { update.bind(3, until.timeIntervalSince1970) } else { update.bind(3, nil as String?) }
        update.bind(4, lastError)
        try update.step()
        update.reset()
    }

    private static func finish(_ db: SQLiteConnection, targetID: Int64, batch: (id: String, range: Range<Int64>)) throws {
        // Rows of the range that were never sent (superseded by a later write of the same key) leave too.
        try markDelivered(db, targetID: targetID, ranges: [batch.range], bytes: 0)
        let delete = try db.prepared("DELETE FROM batches WHERE id = ?1")
        delete.bind(1, batch.id)
        try delete.step()
        delete.reset()
    }

    /// Adds delivered ranges, folds those contiguous with `delivered_seq` into it, and drops segments
    /// that are wholly behind it.
    static func markDelivered(_ db: SQLiteConnection, targetID: Int64, ranges: [Range<Int64>], bytes: Int) throws {
        let insert = try db.prepared("""
            INSERT INTO delivered_ranges (target_id, first_seq, end_seq) VALUES (?1, ?2, ?3)
            ON CONFLICT (target_id, first_seq) DO UPDATE SET end_seq = max(end_seq, excluded.end_seq)
            """)
        for range in ranges where !range.isEmpty {
            insert.bind(1, targetID)
            insert.bind(2, range.lowerBound)
            insert.bind(3, range.upperBound)
            try insert.step()
            insert.reset()
        }
        let position = try db.prepared("SELECT delivered_seq FROM targets WHERE id = ?1")
        position.bind(1, targetID)
        guard try position.step() else { return }
        var delivered = position.int64(0)
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
        let advance = try db.prepared("UPDATE targets SET delivered_seq = ?2, pending_bytes = max(0, pending_bytes - ?3) WHERE id = ?1")
        advance.bind(1, targetID)
        advance.bind(2, delivered)
        advance.bind(3, bytes)
        try advance.step()
        advance.reset()
        let drop = try db.prepared(Self.dropDeliveredSegments)
        drop.bind(1, targetID)
        drop.bind(2, delivered)
        try drop.step()
        drop.reset()
    }

    /// Removes the segments wholly below the delivery position. `first_seq < ?2` adds nothing to the
    /// meaning (a segment holds at least one record) but lets SQLite search the index for the delivered
    /// segments only: without it, every delivered batch scanned the rows of the target's whole backlog
    /// (in the bench's end to end, with 15 M records pending, a fifth of the daemon's CPU).
    static let dropDeliveredSegments = "DELETE FROM segments WHERE target_id = ?1 AND first_seq < ?2 AND first_seq + record_count <= ?2"

    /// Sorted seqs as contiguous ranges.
    static func runs(of seqs: [Int64]) -> [Range<Int64>] {
        var result: [Range<Int64>] = []
        for seq in seqs.sorted() {
            if let last = result.last, last.upperBound == seq {
                result[result.count - 1] = last.lowerBound..<(seq + 1)
            } else {
                result.append(seq..<(seq + 1))
            }
        }
        return result
    }
}

/// A result handed from the writer thread to a waiting delivery worker.
private final class NIOLockedResult: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<Void, any Error> = .success(())
    func set(_ value: Result<Void, any Error>) { lock.withLock { result = value } }
    func get() throws { try lock.withLock { result }.get() }
}

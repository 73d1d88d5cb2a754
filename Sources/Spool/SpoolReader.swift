import Core
import FoundationEssentials

#if canImport(Glibc)
    import Glibc
#endif

/// Delivery's read connection to the spool. Readers never block the writer (WAL), and see only
/// committed records. Not thread-safe: one per delivery worker.
package final class SpoolReader {
    private let db: SQLiteConnection

    /// What delivery needs to know of one target.
    package struct TargetRow: Sendable {
        package var id: Int64
        package var target: SpoolTarget
        package var nextSeq: Int64
        package var deliveredSeq: Int64
    }

    /// A batch registered before its first attempt and not finished yet.
    package struct BatchRow: Sendable, Equatable {
        package var id: String
        package var targetID: Int64
        package var firstSeq: Int64
        package var endSeq: Int64
        package var attempts: Int
        /// Where isolating refused rows stands; empty when the batch was never split (one part, whole).
        package var parts: [DeliveryLedger.Part] = []
    }

    package init(path: String) throws(SpoolError) {
        db = try SpoolDatabase.openForReading(path: path)
    }

    package func targets() throws(SQLiteError) -> [TargetRow] {
        let select = try db.prepared(
            "SELECT t.id, t.table_name, t.mode, t.primary_key, t.tags, \(TargetLog.end), t.delivered_seq FROM targets t")
        defer { select.reset() }
        var rows: [TargetRow] = []
        while try select.step() {
            rows.append(
                TargetRow(
                    id: select.int64(0),
                    target: SpoolTarget(
                        table: select.string(1) ?? "", mode: try select.mode(2), primaryKey: select.string(3) ?? "",
                        tags: select.string(4) ?? ""),
                    nextSeq: select.int64(5), deliveredSeq: select.int64(6)))
        }
        return rows
    }

    /// The batches left open, in seq order per target, with their isolation progress.
    package func openBatches() throws(SQLiteError) -> [BatchRow] {
        let select = try db.prepared("SELECT id, target_id, first_seq, end_seq, attempts FROM batches ORDER BY target_id, first_seq")
        var rows: [BatchRow] = []
        while try select.step() {
            rows.append(
                BatchRow(
                    id: select.string(0) ?? "", targetID: select.int64(1), firstSeq: select.int64(2),
                    endSeq: select.int64(3), attempts: select.int(4)))
        }
        select.reset()
        let parts = try db.prepared(
            """
            SELECT first_seq, end_seq, refused, status, reason, errors, request_id FROM batch_parts
            WHERE batch_id = ?1 ORDER BY first_seq
            """)
        for index in rows.indices {
            parts.bind(1, rows[index].id)
            while try parts.step() {
                let refusal =
                    parts.int(2) == 0
                    ? nil
                    : DeliveryLedger.Refusal(
                        status: parts.isNull(3) ? nil : parts.int(3), reason: parts.string(4) ?? "",
                        errors: Self.strings(parts.string(5)), requestID: parts.string(6))
                rows[index].parts.append(DeliveryLedger.Part(range: parts.int64(0)..<parts.int64(1), refusal: refusal))
            }
            parts.reset()
        }
        return rows
    }

    /// A JSON array of strings, as the ledger stores error lists.
    private static func strings(_ json: String?) -> [String] {
        guard let json, case .array(let items)? = try? Array(json.utf8).withUnsafeBytes({ try JSONValue.parse($0) }) else { return [] }
        return items.compactMap { if case .string(let text) = $0 { text } else { nil } }
    }

    /// The highest seq any open batch or delivered range of `targetID` reaches (where new batches start).
    package func assignedEnd(targetID: Int64) throws(SQLiteError) -> Int64 {
        let select = try db.prepared(
            """
            SELECT max(coalesce((SELECT max(end_seq) FROM batches WHERE target_id = ?1), 0),
                       coalesce((SELECT max(end_seq) FROM delivered_ranges WHERE target_id = ?1), 0))
            """)
        defer { select.reset() }
        select.bind(1, targetID)
        return try select.step() ? select.int64(0) : 0
    }

    /// When the record at `seq` was spooled (the append time of its segment), if it is still there.
    package func appendedAt(targetID: Int64, seq: Int64) throws(SQLiteError) -> Double? {
        let select = try db.prepared(
            """
            SELECT appended_at FROM segments WHERE target_id = ?1 AND first_seq <= ?2 AND first_seq + record_count > ?2
            """)
        defer { select.reset() }
        select.bind(1, targetID)
        select.bind(2, seq)
        return try select.step() ? select.double(0) : nil
    }

    /// Reads records of `targetID` from `from` (inclusive) to at most `end` (exclusive), with their tags,
    /// stopping before `maxRows` records, `maxBytes` stored bytes or `maxTagBytes` of tags (each run of tagged
    /// records with other tags counts its tags and 32 bytes) would be passed; at least one record is read.
    /// Seqs inside delivered ranges are skipped. Each record is followed by `separator` (see
    /// ``SpooledRecords``). The records' bytes go into `storage` when nothing else holds it (an earlier
    /// batch's buffer, whose pages are already in memory). Returns the records and the seq after the last
    /// one read.
    package func read(
        targetID: Int64, from requested: Int64, end: Int64, maxRows: Int, maxBytes: Int,
        maxTagBytes: Int = .max, separator: UInt8 = UInt8(ascii: ","), reusing storage: consuming [UInt8] = []
    ) throws(SQLiteError) -> (SpooledRecords, next: Int64) {
        // Everything below delivered_seq has left the queue, including parts of a batch delivered or
        // dead-lettered on an earlier attempt and since folded into the position: never read it again.
        let position = try db.prepared("SELECT delivered_seq FROM targets WHERE id = ?1")
        position.bind(1, targetID)
        let delivered = try position.step() ? position.int64(0) : 0
        position.reset()
        let from = max(requested, delivered)
        var skip: [Range<Int64>] = []
        let ranges = try db.prepared(
            "SELECT first_seq, end_seq FROM delivered_ranges WHERE target_id = ?1 AND end_seq > ?2 AND first_seq < ?3 ORDER BY first_seq")
        ranges.bind(1, targetID)
        ranges.bind(2, from)
        ranges.bind(3, end)
        while try ranges.step() { skip.append(ranges.int64(0)..<ranges.int64(1)) }
        ranges.reset()

        var records = SpooledRecords(separator: separator, storage: consume storage)
        // Size the buffer once for a full batch rather than doubling into twice its size.
        if maxBytes < 64 << 20, records.bytes.capacity < maxBytes + 4096 { records.bytes.reserveCapacity(maxBytes + 4096) }
        var next = from
        let select = try db.prepared(
            """
            SELECT s.first_seq, s.record_count, \(SegmentLog.records), s.tags FROM segments s
            WHERE s.target_id = ?1 AND s.first_seq + s.record_count > ?2 AND s.first_seq < ?3 ORDER BY s.first_seq
            """)
        var tagBytes = 0
        defer { select.reset() }
        select.bind(1, targetID)
        select.bind(2, from)
        select.bind(3, end)
        scan: while try select.step() {
            var seq = select.int64(0)
            let blob = select.blob(2)
            let tags = select.string(3) ?? ""
            guard let base = blob.baseAddress else { continue }
            var start = 0
            while start < blob.count, let newline = memchr(base + start, Int32(UInt8(ascii: "\n")), blob.count - start) {
                let index = base.distance(to: UnsafeRawPointer(newline))
                defer {
                    seq += 1
                    start = index + 1
                }
                guard seq >= next else { continue }
                guard seq < end else { break scan }
                if skip.contains(where: { $0.contains(seq) }) {
                    next = seq + 1
                    continue
                }
                let newRun = tags != (records.tagRuns.last?.tags ?? "")
                let runCost = newRun && !tags.isEmpty ? tags.utf8.count + 32 : 0
                if !records.isEmpty,
                    records.count >= maxRows || records.bytes.count + (index - start) + 1 > maxBytes || tagBytes + runCost > maxTagBytes
                {
                    break scan
                }
                tagBytes += runCost
                records.append(seq: seq, UnsafeRawBufferPointer(rebasing: blob[start..<index]), tags: tags)
                next = seq + 1
            }
        }
        return (records, next)
    }
}

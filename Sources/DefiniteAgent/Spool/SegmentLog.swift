/// Appending records to a target's log: the one place that writes `segments`, for intake commits and
/// for `dlq replay`.
///
/// A segment holds consecutive records of one target, all written with the same `config.tags`, and at most
/// ``maxSegmentBytes`` (so that reading one back, which SQLite does a whole blob at a time, stays cheap in
/// memory whatever the size of a commit). Records keep their order and get consecutive seqs.
enum SegmentLog {
    /// Largest segment written.
    static let maxSegmentBytes = 1 << 20

    /// Appends `bytes` (`count` records, each followed by `\n`) to target `targetID`'s log, in segments of
    /// at most ``maxSegmentBytes``, all carrying `tags`. Returns the seqs the records got. Runs inside the
    /// caller's transaction.
    static func append(_ bytes: ArraySlice<UInt8>, count: Int, targetID: Int64, tags: String, at now: Double,
                       db: SQLiteConnection) throws -> Range<Int64> {
        guard bytes.count > maxSegmentBytes else {
            return try appendSegment(bytes, count: count, targetID: targetID, tags: tags, at: now, db: db)
        }
        var seqs: Range<Int64>?
        var start = bytes.startIndex
        var records = 0
        var index = bytes.startIndex
        while index < bytes.endIndex {
            if bytes[index] == UInt8(ascii: "\n") {
                records += 1
                if index + 1 - start >= maxSegmentBytes || index + 1 == bytes.endIndex {
                    let appended = try appendSegment(bytes[start...index], count: records, targetID: targetID, tags: tags, at: now, db: db)
                    seqs = (seqs?.lowerBound ?? appended.lowerBound)..<appended.upperBound
                    start = index + 1
                    records = 0
                }
            }
            index += 1
        }
        guard let seqs else { throw SQLiteError(code: 1, extendedCode: 1, message: "no record ends with a newline", context: "appending to the spool") }
        return seqs
    }

    private static func appendSegment(_ bytes: ArraySlice<UInt8>, count: Int, targetID: Int64, tags: String, at now: Double,
                                      db: SQLiteConnection) throws -> Range<Int64> {
        let advance = try db.prepared(
            "UPDATE targets SET next_seq = next_seq + ?1, pending_bytes = pending_bytes + ?2 WHERE id = ?3 RETURNING next_seq - ?1")
        advance.bind(1, count)
        advance.bind(2, bytes.count)
        advance.bind(3, targetID)
        guard try advance.step() else {
            throw SQLiteError(code: 1, extendedCode: 1, message: "target \(targetID) vanished from the spool", context: "appending to the spool")
        }
        let firstSeq = advance.int64(0)
        advance.reset()
        let insert = try db.prepared("""
            INSERT INTO segments (target_id, first_seq, record_count, byte_count, appended_at, records, tags)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
            """)
        insert.bind(1, targetID)
        insert.bind(2, firstSeq)
        insert.bind(3, count)
        insert.bind(4, bytes.count)
        insert.bind(5, now)
        insert.bind(7, tags)
        try bytes.withUnsafeBytes { raw in
            insert.bindBlobNoCopy(6, raw)
            try insert.step()
            insert.reset()
        }
        return firstSeq..<(firstSeq + Int64(count))
    }
}

/// Appending records to a target's log: the one place that writes `segments`, for intake commits and
/// for `dlq replay`. An append writes the segment rows only (``TargetLog``).
///
/// A segment holds consecutive records of one target, all written with the same `config.tags`, and at most
/// ``maxSegmentBytes`` (so that reading one back, which SQLite does a whole blob at a time, stays cheap in
/// memory whatever the size of a commit). Records keep their order and get consecutive seqs.
///
/// The records of a segment of at most ``maxInlineBytes`` are kept in its row (`segments.records`): a
/// commit of a few records writes that one page. Larger ones are kept apart, in `segment_records`
/// (`segments.records_id`): `segments` is keyed by (target, seq) without a rowid, and such a table repeats
/// whole rows in its interior pages, so big rows there would make its tree deep and every lookup slow. Read
/// a segment's records with ``records``.
enum SegmentLog {
    /// Largest segment written.
    static let maxSegmentBytes = 1 << 20

    /// Largest segment whose records stay in its row (a row then fits a 4 KiB page several times over).
    static let maxInlineBytes = 512

    /// SQL: segment `s`'s records, wherever they are kept.
    static let records = "coalesce(s.records, (SELECT r.records FROM segment_records r WHERE r.id = s.records_id))"

    /// Appends `bytes` (`count` records, each followed by `\n`) to target `targetID`'s log, in segments of
    /// at most ``maxSegmentBytes``, all carrying `tags`. Returns the seqs the records got. Runs inside the
    /// caller's transaction.
    static func append(
        _ bytes: ArraySlice<UInt8>, count: Int, targetID: Int64, tags: String, at now: Double,
        db: SQLiteConnection
    ) throws -> Range<Int64> {
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
        guard let seqs else {
            throw SQLiteError(code: 1, extendedCode: 1, message: "no record ends with a newline", context: "appending to the spool")
        }
        return seqs
    }

    private static func appendSegment(
        _ bytes: ArraySlice<UInt8>, count: Int, targetID: Int64, tags: String, at now: Double,
        db: SQLiteConnection
    ) throws -> Range<Int64> {
        // The target's row is not written: see TargetLog.
        let firstSeq = try TargetLog.end(of: targetID, db: db)
        var recordsID: Int64?
        if bytes.count > maxInlineBytes {
            let keep = try db.prepared("INSERT INTO segment_records (records) VALUES (?1)")
            defer { keep.reset() }
            try bytes.withUnsafeBytes { raw in
                keep.bindBlobNoCopy(1, raw)
                try keep.step()
            }
            recordsID = db.lastInsertRowID
        }
        let insert = try db.prepared(
            """
            INSERT INTO segments (target_id, first_seq, record_count, byte_count, appended_at, records_id, tags, records)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
            """)
        // Bindings outlive a reset: each append binds both places, one of them to NULL.
        defer { insert.reset() }
        insert.bind(1, targetID)
        insert.bind(2, firstSeq)
        insert.bind(3, count)
        insert.bind(4, bytes.count)
        insert.bind(5, now)
        insert.bind(7, tags)
        if let recordsID {
            insert.bind(6, recordsID)
            insert.bindNull(8)
            try insert.step()
        } else {
            insert.bindNull(6)
            try bytes.withUnsafeBytes { raw in
                insert.bindBlobNoCopy(8, raw)
                try insert.step()
                insert.bindNull(8)  // the bytes are not ours to keep pointing at
            }
        }
        return firstSeq..<(firstSeq + Int64(count))
    }
}

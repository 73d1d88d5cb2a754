/// Where a target's log ends and how many bytes it holds, kept without rewriting the target's row at every
/// commit.
///
/// A commit appends `segments` rows and nothing else: a commit of a few records writes one page. The
/// target row's `next_seq` and `pending_bytes` are *settled* (brought up to date) by the writer at most
/// once a second for each target it appends to, and when it stops. Between settlements the truth is the row
/// plus the segments appended since:
/// - the log ends at the largest of `next_seq`, `delivered_seq` and the end of the last segment (segments
///   are removed only once delivery has passed them, so when none is left the position says where the
///   log ended);
/// - the target holds `pending_bytes` (its segments below `next_seq`, less those removed since) plus the
///   bytes of its segments at or above `next_seq`.
///
/// Removing delivered segments takes off `pending_bytes` only what it counted: the segments below
/// `next_seq`. A crash needs no repair: settling is part of a commit, so the row is as of some settlement and
/// every segment after it reads as not settled yet.
enum TargetLog {
    /// SQL: the seq the next record of target `t` gets (where its log ends).
    static let end = """
        max(t.next_seq, t.delivered_seq,
            coalesce((SELECT s.first_seq + s.record_count FROM segments s WHERE s.target_id = t.id ORDER BY s.first_seq DESC LIMIT 1), 0))
        """

    /// SQL: the record bytes target `t`'s segments hold.
    static let storedBytes = """
        (t.pending_bytes + coalesce((SELECT sum(s.byte_count) FROM segments s WHERE s.target_id = t.id AND s.first_seq >= t.next_seq), 0))
        """

    /// The seq the next record of `targetID` gets; the caller's transaction keeps it valid.
    static func end(of targetID: Int64, db: SQLiteConnection) throws -> Int64 {
        let select = try db.prepared("SELECT \(end) FROM targets t WHERE t.id = ?1")
        defer { select.reset() }
        select.bind(1, targetID)
        guard try select.step() else {
            throw SQLiteError(
                code: 1, extendedCode: 1, message: "target \(targetID) vanished from the spool", context: "appending to the spool")
        }
        return select.int64(0)
    }

    /// Brings `targetID`'s `next_seq` and `pending_bytes` up to date, inside the caller's transaction.
    static func settle(_ targetID: Int64, db: SQLiteConnection) throws {
        // Every expression of SET reads the row as it was before the update.
        let update = try db.prepared("UPDATE targets AS t SET pending_bytes = \(storedBytes), next_seq = \(end) WHERE t.id = ?1")
        defer { update.reset() }
        update.bind(1, targetID)
        try update.step()
    }

    /// Removes `targetID`'s segments wholly below `position` and returns their bytes: all of them (what the
    /// spool's stored total loses) and those `pending_bytes` counted (the ones below `next_seq`), to be taken
    /// off it.
    ///
    /// `first_seq < ?2` adds nothing to the meaning (a segment holds at least one record) but bounds the
    /// search of the key: without it, every delivered batch read the rows of the target's whole backlog
    /// (in the bench's end to end, with 15 M records pending, a fifth of the daemon's CPU).
    static func removeSegments(
        of targetID: Int64, below position: Int64, settledBelow nextSeq: Int64, db: SQLiteConnection
    ) throws -> (removed: Int, counted: Int) {
        let remove = try db.prepared(removeDelivered)
        defer { remove.reset() }
        remove.bind(1, targetID)
        remove.bind(2, position)
        var (removed, counted) = (0, 0)
        while try remove.step() {
            removed += remove.int(1)
            if remove.int64(0) < nextSeq { counted += remove.int(1) }
        }
        return (removed, counted)
    }

    /// SQL of ``removeSegments(of:below:settledBelow:db:)`` (its plan is tested).
    static let removeDelivered = """
        DELETE FROM segments WHERE target_id = ?1 AND first_seq < ?2 AND first_seq + record_count <= ?2 RETURNING first_seq, byte_count
        """
}

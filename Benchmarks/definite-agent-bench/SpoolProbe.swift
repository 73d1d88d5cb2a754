import CSQLite
import Foundation

/// Reads the spool's queue positions through its own read-only SQLite connection (safe while the daemon
/// runs; it never writes, so it cannot disturb the daemon's WAL).
final class SpoolProbe {
    struct Totals {
        /// Records spooled and not yet delivered: per target, where its log ends less `delivered_seq`.
        var pending: Int
        /// Their bytes (newline-separated compact JSON).
        var pendingBytes: Int
        /// Records that left the queue: `sum(delivered_seq)`.
        var delivered: Int
    }

    private var db: OpaquePointer?
    private var query: OpaquePointer?

    init(spool path: String) throws {
        let uri = "file:\(path)?mode=ro"
        guard sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nil) == SQLITE_OK else {
            defer { sqlite3_close(db) }
            throw BenchError("cannot open \(path) read-only: \(String(cString: sqlite3_errmsg(db)))")
        }
        sqlite3_busy_timeout(db, 2000)
        // A target's row is settled at most once a second; the segments appended since complete it (the
        // daemon's TargetLog, whose expressions these are).
        let sql = """
            SELECT coalesce(sum(log_end - delivered_seq), 0), coalesce(sum(stored), 0), coalesce(sum(delivered_seq), 0)
            FROM (SELECT t.delivered_seq,
                         max(t.next_seq, t.delivered_seq, coalesce((SELECT s.first_seq + s.record_count FROM segments s
                             WHERE s.target_id = t.id ORDER BY s.first_seq DESC LIMIT 1), 0)) AS log_end,
                         t.pending_bytes + coalesce((SELECT sum(s.byte_count) FROM segments s
                             WHERE s.target_id = t.id AND s.first_seq >= t.next_seq), 0) AS stored
                  FROM targets t)
            """
        guard sqlite3_prepare_v2(db, sql, -1, &query, nil) == SQLITE_OK else {
            defer { sqlite3_close(db) }
            throw BenchError("not a spool: \(String(cString: sqlite3_errmsg(db)))")
        }
    }

    func totals() throws -> Totals {
        defer { sqlite3_reset(query) }
        guard sqlite3_step(query) == SQLITE_ROW else {
            throw BenchError("spool query failed: \(String(cString: sqlite3_errmsg(db)))")
        }
        return Totals(
            pending: Int(sqlite3_column_int64(query, 0)), pendingBytes: Int(sqlite3_column_int64(query, 1)),
            delivered: Int(sqlite3_column_int64(query, 2)))
    }

    /// Polls every 20 ms until nothing is pending; returns false after `timeout` seconds.
    func waitUntilDrained(timeout: Double) throws -> Bool {
        let start = Monotonic.nanos()
        while Monotonic.seconds(since: start) < timeout {
            if try totals().pending == 0 { return true }
            usleep(20_000)
        }
        return false
    }

    deinit {
        sqlite3_finalize(query)
        sqlite3_close(db)
    }
}

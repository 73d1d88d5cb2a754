import CSQLite
import Foundation

/// The raw limit: a plain loop inserting the same records, one row each, with prepared statements,
/// 1,000 rows per transaction, into a WAL database with synchronous=FULL.
enum SQLiteLimit {
    static func measure(records: Int) throws -> Double {
        let path = NSTemporaryDirectory() + "definite-agent-bench-raw-\(getpid()).db"
        defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
        var db: OpaquePointer?
        guard sqlite3_open(path, &db) == SQLITE_OK else { throw BenchError("cannot open \(path)") }
        defer { sqlite3_close(db) }
        sqlite3_exec(
            db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE r (id INTEGER PRIMARY KEY, body BLOB)", nil, nil, nil)
        var insert: OpaquePointer?
        sqlite3_prepare_v2(db, "INSERT INTO r (body) VALUES (?)", -1, &insert, nil)
        defer { sqlite3_finalize(insert) }
        let rows = (0..<1000).map { Workload.record($0, ack: nil) }
        let start = Date()
        var done = 0
        while done < records {
            sqlite3_exec(db, "BEGIN", nil, nil, nil)
            for row in rows {
                row.withUnsafeBytes { raw in
                    sqlite3_bind_blob(insert, 1, raw.baseAddress, Int32(raw.count), nil)
                    sqlite3_step(insert)
                    sqlite3_reset(insert)
                }
            }
            sqlite3_exec(db, "COMMIT", nil, nil, nil)
            done += rows.count
        }
        return Double(done) / Date().timeIntervalSince(start)
    }
}

import CSpoolVFS
import Foundation
import Glibc
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// Writes gathered until each sync (``SQLiteConnection/Writes/coalescedUntilSync``): the same database,
/// fewer system calls, and a write that fails still fails its commit.
@Suite("Coalesced writes")
struct CoalescedWritesTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("coalesced-writes-tests")
    }

    func open(_ path: String, _ writes: SQLiteConnection.Writes) throws -> SQLiteConnection {
        let db = try SQLiteConnection(path: path, mode: .readWrite, writes: writes)
        try db.execute("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -128")
        return db
    }

    /// Inserts `rows` blobs of `size` bytes in one transaction.
    func insert(_ db: SQLiteConnection, rows: Int, size: Int, from first: Int) throws {
        try db.execute("BEGIN IMMEDIATE")
        let insert = try db.prepared("INSERT INTO t (id, body) VALUES (?1, ?2)")
        for id in first..<first + rows {
            let body = [UInt8](repeating: UInt8(truncatingIfNeeded: id), count: size)
            insert.bind(1, id)
            try body.withUnsafeBytes { raw in
                insert.bindBlobNoCopy(2, raw)
                try insert.step()
                insert.reset()
            }
        }
        try db.execute("COMMIT")
    }

    func check(_ path: String, rows: Int, size: Int) throws {
        let reader = try SQLiteConnection(path: path, mode: .readOnly)
        let integrity = try reader.prepared("PRAGMA integrity_check")
        #expect(try integrity.step() && integrity.string(0) == "ok")
        integrity.reset()
        #expect(try reader.scalar("SELECT count(*) FROM t") == Int64(rows))
        #expect(
            try reader.scalar("SELECT count(*) FROM t WHERE length(body) = \(size) AND substr(body, 1, 1) = substr(body, \(size), 1)")
                == Int64(rows))
    }

    @Test func otherConnectionsSeeEveryCommitAndTheWritesWereGathered() throws {
        let path = directory + "/gathered.db"
        let db = try open(path, .coalescedUntilSync)
        try db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        let before = cspool_coalesced_writes()
        // 2 MiB per commit: ~500 overflow pages, 1,000 write calls without gathering.
        for commit in 0..<4 {
            try insert(db, rows: 32, size: 64 << 10, from: commit * 32)
            try check(path, rows: (commit + 1) * 32, size: 64 << 10)
        }
        #expect(cspool_coalesced_writes() - before > 3_000)
        // A checkpoint (database file writes, gathered too) and the file alone holds everything.
        try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try check(path, rows: 128, size: 64 << 10)
    }

    @Test(.enabled(if: getuid() == 0, "mounts a small tmpfs")) func aFullDiskFailsTheCommitAndLosesNothingCommitted() throws {
        guard let small = try SmallFilesystem(at: directory + "/small", size: "3m") else {
            Issue.record("could not mount a tmpfs")
            return
        }
        defer { small.unmount() }
        let path = small.path + "/full.db"
        let db = try open(path, .coalescedUntilSync)
        try db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        var committed = 0
        var failure: SQLiteError?
        while failure == nil, committed < 10_000 {
            do {
                try insert(db, rows: 4, size: 32 << 10, from: committed)
                committed += 4
            } catch let error as SQLiteError {
                failure = error
                try? db.execute("ROLLBACK")
            }
        }
        let error = try #require(failure)
        #expect(error.isDiskFull, "\(error)")
        #expect(committed > 0)
        try check(path, rows: committed, size: 32 << 10)
    }

    /// A checkpoint into a full disk. Its pages, gathered, reached the file only when SQLite hinted that the
    /// checkpoint had copied them (`SQLITE_FCNTL_CKPT_DONE`), whose result SQLite ignores: the failed write
    /// was dropped, the sync after it succeeded, the WAL was reset, and the spool was left with pages of
    /// zeros (a disk filled by another program, found by a black-box probe). The checkpoint must fail, and
    /// succeed once there is room, with nothing lost.
    @Test(.enabled(if: getuid() == 0, "mounts a small tmpfs")) func aCheckpointIntoAFullDiskFailsAndLosesNothing() throws {
        guard let small = try SmallFilesystem(at: directory + "/checkpoint", size: "2m") else {
            Issue.record("could not mount a tmpfs")
            return
        }
        defer { small.unmount() }
        let path = small.path + "/spool.db"
        let db = try open(path, .coalescedUntilSync)
        try db.execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        // ~40 KiB of rows: the checkpoint writes a dozen pages, one after the other, gathered in one run.
        try insert(db, rows: 10, size: 3000, from: 0)
        let filler = small.fill()

        #expect(throws: SQLiteError.self, "a checkpoint into a full disk reported success") {
            try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        }
        unlink(filler)
        try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try check(path, rows: 10, size: 3000)
    }
}

import CSQLite
import Core
import FoundationEssentials
import Glibc

/// Opens the spool file: checks that it is ours, applies migrations, and sets the pragmas the
/// durability setting promises.
///
/// - Important: Nothing here ever overwrites or truncates a file that is not a definite-agent spool, or
///   one written by a newer version: both are errors that say what to do.
package enum SpoolDatabase {
    /// How long a connection waits for another one's lock (the CLI's, the checkpointer's) before its
    /// statement fails with SQLITE_BUSY: long enough for any commit or checkpoint of the spool.
    static let busyTimeout = "PRAGMA busy_timeout = 10000"

    /// Opens (creating if needed) the spool for writing.
    ///
    /// - `durability == .full`: `synchronous=FULL`, so each commit fsyncs the WAL before returning; a
    ///   commit that returned survives power loss.
    /// - `durability == .normal`: `synchronous=NORMAL`; a commit survives `kill -9` (it is in the WAL),
    ///   but the last commits may be lost on power loss.
    ///
    /// The spool's files get `access` (``SpoolAccess``) before SQLite opens them; what had to change on an
    /// existing spool is returned, for the log.
    static func openForWriting(
        path: String, durability: AgentConfiguration.Durability, access: SpoolAccess = .ownerOnly
    ) throws(SpoolError) -> (connection: SQLiteConnection, accessChanges: [SpoolAccess.Change]) {
        try checkNotForeign(path: path)
        try mapErrors(path: path, .cannotOpen) { try createParentDirectory(of: path) }
        let accessChanges = try access.prepare(spoolAt: path)
        let connection = try mapErrors(path: path, .cannotOpen) {
            let db = try SQLiteConnection(path: path, mode: .readWrite, writes: writes(durability))
            try db.execute(busyTimeout)
            // SQLite falls back to read-only when it cannot write (a read-only mount or directory, a file
            // owned by someone else): refuse that at start rather than answer every write with an error.
            guard sqlite3_db_readonly(db.handle, "main") == 0 else {
                throw SpoolError(
                    .cannotOpen, path: path,
                    "the spool can only be opened read-only (read-only filesystem, or the file or its directory is not writable by this user); make it writable or set [spool] path elsewhere"
                )
            }
            // Identity first: nothing below (journal mode, migrations) may touch a file that is not ours.
            try checkIdentity(db, path: path, allowEmpty: true)
            // Page size is fixed when the first table is written: a spool made by an earlier version
            // keeps its pages, and everything below reads the size in force.
            try db.execute("PRAGMA page_size = \(Self.newSpoolPageSize)")
            let journal = try db.prepared("PRAGMA journal_mode = WAL")
            guard try journal.step(), journal.string(0) == "wal" else {
                throw SpoolError(
                    .cannotOpen, path: path,
                    "cannot switch the database to WAL mode; is the directory on a filesystem without shared memory support?")
            }
            journal.reset()
            try db.execute(synchronousPragma(durability))
            // Checkpoint every ~16 MiB of WAL (the daemon's ``SpoolCheckpointer`` takes this over while it
            // runs), and shrink the WAL file back after a checkpoint.
            let pageSize = Int(try db.scalar("PRAGMA page_size"))
            try db.execute("PRAGMA wal_autocheckpoint = \(SpoolCheckpointer.limitBytes / pageSize); PRAGMA journal_size_limit = 67108864")
            // The writer appends: new pages are written once and not read back, and a commit's pages beyond
            // the cache go to the WAL early (they must go there anyway). A small cache keeps its memory low.
            try db.execute("PRAGMA cache_size = -512")
            try db.execute(Self.deletePolicy)
            try migrate(db, path: path)
            // A target's state is what the running daemon's delivery found. One a stopped or killed daemon
            // left ("backing off until …", "isolating bad rows") read as this daemon's until its first
            // answer, though this one sends at once.
            try db.execute("UPDATE targets SET state = NULL, state_until = NULL WHERE state IS NOT NULL OR state_until IS NOT NULL")
            return db
        }
        return (connection, accessChanges)
    }

    /// The `synchronous` setting `durability` asks for: commits (and checkpoints) of every connection that
    /// writes the spool sync as it says.
    private static func synchronousPragma(_ durability: AgentConfiguration.Durability) -> String {
        "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")"
    }

    /// Write coalescing (``SQLiteConnection/Writes``) needs every commit synced, which only "full" does.
    private static func writes(_ durability: AgentConfiguration.Durability) -> SQLiteConnection.Writes {
        durability == .full ? .coalescedUntilSync : .direct
    }

    /// Page size of a spool created by this version: SQLite's 4 KiB. Every commit writes whole pages to
    /// the WAL, so a writer acknowledging one record at a time pays a page per record (4 KiB rather than
    /// 16, ``TargetLog``); bulk commits are mostly overflow pages, whose per-page cost was system calls,
    /// which ``SQLiteConnection/Writes/coalescedUntilSync`` gathers (intake CPU per record with 4 KiB
    /// pages and gathered writes ≤ 16 KiB pages without them, BENCHMARKS.md). A spool made by the release
    /// before keeps its 16 KiB pages.
    static let newSpoolPageSize = 4096

    /// Opens the connection of the ``SpoolCheckpointer``, after the writer opened the spool: it only ever
    /// checkpoints, and syncs the file at each checkpoint as the durability setting asks.
    static func openForCheckpointing(path: String, durability: AgentConfiguration.Durability) throws(SpoolError) -> SQLiteConnection {
        try mapErrors(path: path, .cannotOpen) {
            let db = try SQLiteConnection(path: path, mode: .readWrite, writes: writes(durability))
            // A checkpoint copies WAL frames to the file directly; it needs no page cache to speak of.
            try db.execute("\(busyTimeout); PRAGMA cache_size = -256")
            try db.execute(synchronousPragma(durability))
            return db
        }
    }

    /// Opens an existing spool read-only, for the CLI and delivery's readers. Works while the daemon writes.
    ///
    /// A spool an earlier release wrote is refused (``SpoolError/Code/olderSchema``) unless
    /// `acceptingOlderSchema`: only the daemon migrates, and the CLI's queries read the current layout.
    /// `status`, whose queries read only what every version has, accepts it, so an operator can look at
    /// a spool between a package upgrade and the daemon's restart.
    static func openForReading(path: String, acceptingOlderSchema: Bool = false) throws(SpoolError) -> SQLiteConnection {
        try checkPresent(path, missing: "no spool file here; the daemon creates it at its first start (check [spool] path and --config)")
        return try mapErrors(path: path, .cannotOpen) {
            let db = try SQLiteConnection(path: path, mode: .readOnly)
            // Readers stream through the log once; a small page cache keeps each connection's memory low.
            try db.execute("\(busyTimeout); PRAGMA cache_size = -512")
            try checkIdentity(db, path: path, allowEmpty: false)
            if !acceptingOlderSchema { try checkMigrated(db, path: path) }
            return db
        }
    }

    /// Opens an existing spool for maintenance writes from the CLI (the daemon may be running; SQLite's
    /// locking makes the two take turns). A spool an earlier release wrote is refused
    /// (``SpoolError/Code/olderSchema``): only the daemon migrates.
    static func openForMaintenance(path: String) throws(SpoolError) -> SQLiteConnection {
        try checkPresent(path, missing: "no spool file here; check [spool] path and --config")
        return try mapErrors(path: path, .cannotOpen) {
            let db = try SQLiteConnection(path: path, mode: .readWrite)
            try db.execute("\(busyTimeout); PRAGMA synchronous = FULL")
            try db.execute(Self.deletePolicy)
            try checkIdentity(db, path: path, allowEmpty: false)
            try checkMigrated(db, path: path)
            return db
        }
    }

    /// Throws ``SpoolError/Code/missing`` with `missing` when nothing is at `path`, and
    /// ``SpoolError/Code/notASpool`` when something other than a file is. A path the caller may not
    /// look at is not "missing": it was reported so ("no spool file here", "the daemon never ran") to an
    /// operator without access to the spool's directory, while the daemon ran and delivered.
    private static func checkPresent(_ path: String, missing: String) throws(SpoolError) {
        var info = stat()
        guard stat(path, &info) != 0 else {
            // A directory at the path was "disk I/O error (SQLite code 10)".
            do {
                try FileSystem.requireRegularFile(mode: info.st_mode)
            } catch {
                throw SpoolError(.notASpool, path: path, "\(error), so not a spool; set [spool] path to a file")
            }
            return
        }
        let error = SystemCallError()
        switch error.code {
        case ENOENT:
            throw SpoolError(.missing, path: path, missing)
        case EACCES:
            throw SpoolError(
                .cannotOpen, path: path,
                "permission denied on the spool's directory; run the command as the user the daemon runs as (sudo -u definite-agent …)")
        default:
            throw SpoolError(.cannotOpen, path: path, "cannot look at the spool: \(error)")
        }
    }

    /// Debian builds SQLite with `secure_delete` on, which zeroes every freed page: delivering a batch
    /// would write its rows a second time (into the WAL, then the file). `FAST` clears deleted content
    /// only where that costs no extra I/O. Besides halving delivery's writes, this keeps the bookkeeping
    /// of a delivery small enough to fit in the disk reserve when the disk is full.
    static let deletePolicy = "PRAGMA secure_delete = FAST"

    // MARK: Checks

    /// A file that exists but does not start with SQLite's header is refused before SQLite touches it.
    ///
    /// - Important: Only the first opener in a process may do this. Closing any descriptor of the database
    ///   file releases every POSIX lock the process holds on it, including those of open SQLite
    ///   connections; another process could then take the database for idle, checkpoint and remove the
    ///   WAL under us. Later opens (the delivery readers, the CLI's) rely on SQLite's own `SQLITE_NOTADB`
    ///   and on the `application_id` check instead.
    private static func checkNotForeign(path: String) throws(SpoolError) {
        // Non-blocking: a FIFO at the path would otherwise hold the start-up (and its SIGTERM) for ever.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return }
        do {
            try FileSystem.requireRegularFile(fd)
        } catch {
            close(fd)
            throw SpoolError(
                .notASpool, path: path, "\(error), so not a definite-agent spool; it was left untouched. Set [spool] path to a file")
        }
        var header = [UInt8](repeating: 0, count: 16)
        let count = header.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard count > 0 else { return }
        guard header[..<count].elementsEqual(Array("SQLite format 3\u{0}".utf8)) else {
            throw SpoolError(
                .notASpool, path: path,
                "this file is not a SQLite database, so not a definite-agent spool; it was left untouched. Move it away or set [spool] path to another file"
            )
        }
    }

    private static func checkIdentity(_ db: SQLiteConnection, path: String, allowEmpty: Bool) throws(SpoolError) {
        try SpoolDatabase.mapErrors(path: path, .cannotOpen) {
            let applicationID = Int32(truncatingIfNeeded: try db.scalar("PRAGMA application_id"))
            let version = Int(try db.scalar("PRAGMA user_version"))
            let tables = try db.scalar("SELECT count(*) FROM sqlite_schema")
            if applicationID == 0, version == 0, tables == 0, allowEmpty { return }
            guard applicationID == SpoolSchema.applicationID else {
                throw SpoolError(
                    .notASpool, path: path,
                    "this SQLite database is not a definite-agent spool (application_id \(applicationID)); it was left untouched. Set [spool] path to another file"
                )
            }
            guard version <= SpoolSchema.currentVersion else {
                throw SpoolError(
                    .newerSchema, path: path,
                    "the spool has schema version \(version), written by a newer definite-agent (this one knows up to \(SpoolSchema.currentVersion)); it was left untouched. Run the newer version, or drain it there first"
                )
            }
        }
    }

    /// The CLI does not migrate a spool: the daemon of the release that wrote it may still be running (a
    /// package upgraded, the service not yet restarted), and it must not find its layout changed under it.
    private static func checkMigrated(_ db: SQLiteConnection, path: String) throws(SpoolError) {
        let version = try mapErrors(path: path, .cannotOpen) { Int(try db.scalar("PRAGMA user_version")) }
        guard version >= SpoolSchema.currentVersion else {
            throw SpoolError(
                .olderSchema, path: path,
                "the spool has schema version \(version), written by an earlier definite-agent; this one (schema \(SpoolSchema.currentVersion)) upgrades it when its daemon starts. Restart the daemon once (systemctl restart definite-agent), then run this command again; nothing was changed"
            )
        }
    }

    private static func migrate(_ db: SQLiteConnection, path: String) throws {
        try checkIdentity(db, path: path, allowEmpty: true)
        var version = Int(try db.scalar("PRAGMA user_version"))
        while version < SpoolSchema.currentVersion {
            try db.execute("BEGIN IMMEDIATE")
            do {
                try db.execute(SpoolSchema.migrations[version])
                try db.execute("PRAGMA application_id = \(SpoolSchema.applicationID); PRAGMA user_version = \(version + 1)")
                try db.execute("COMMIT")
            } catch {
                try? db.execute("ROLLBACK")
                throw error
            }
            version += 1
        }
    }

    private static func createParentDirectory(of path: String) throws {
        let directory = FileSystem.parentDirectory(of: path)
        guard !directory.isEmpty, !FileSystem.exists(directory) else { return }
        do {
            try FileSystem.createDirectories(directory, mode: 0o750)
        } catch {
            throw SpoolError(.cannotOpen, path: path, "cannot create the spool directory \(directory): \(error)", cause: error)
        }
    }

    /// Runs `body`, turning whatever it throws into a ``SpoolError`` about `path` (SQLite's errors are
    /// classified; anything else becomes `fallback`).
    static func mapErrors<T>(path: String, _ fallback: SpoolError.Code = .storage, _ body: () throws -> T) throws(SpoolError) -> T {
        do {
            return try body()
        } catch let error as SpoolError {
            throw error
        } catch let error as SQLiteError {
            throw classify(error, path: path)
        } catch {
            throw SpoolError(fallback, path: path, "\(error)", cause: error)
        }
    }

    package static func classify(_ error: SQLiteError, path: String) -> SpoolError {
        if error.isNotADatabase {
            return SpoolError(
                .notASpool, path: path,
                "the file is not a usable SQLite database (\(error.message)); it was left untouched. Move it away or set [spool] path to another file",
                cause: error)
        }
        if error.code == SQLITE_CORRUPT {
            return SpoolError(
                .corrupt, path: path,
                "the spool is corrupt (\(error.message)); it was left untouched. Keep a copy, then run `sqlite3 \(path) .recover` or move it away",
                cause: error)
        }
        if error.isReadOnly {
            return SpoolError(
                .cannotOpen, path: path,
                "cannot open the spool for writing (\(error.message)); check that the directory and file are writable by this user",
                cause: error)
        }
        if error.isDiskFull {
            return SpoolError(.storage, path: path, "the disk is full (\(error.message))", cause: error)
        }
        if error.isBusy {
            return SpoolError(
                .cannotOpen, path: path,
                "another process held the spool locked for over 10 s (\(error.message)): an sqlite3 shell in a transaction, a backup tool? Let it finish, then try again",
                cause: error)
        }
        return SpoolError(.cannotOpen, path: path, error.description, cause: error)
    }
}

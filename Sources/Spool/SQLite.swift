import CSQLite
import CSpoolVFS
import Core

/// An SQLite failure: what was being done, on which file, and SQLite's own code and message.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// SQLite's primary result code (`SQLITE_FULL`, `SQLITE_NOTADB`, …).
    public var code: Int32
    public var extendedCode: Int32
    public var message: String
    public var context: String

    public var description: String { "\(context): \(message) (SQLite code \(extendedCode))" }

    public var isDiskFull: Bool { code == SQLITE_FULL }
    public var isNotADatabase: Bool { code == SQLITE_NOTADB }
    public var isBusy: Bool { code == SQLITE_BUSY || code == SQLITE_LOCKED }
    public var isReadOnly: Bool { code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM }
}

/// One SQLite connection. Not thread-safe: each connection is confined to one thread, the thread that
/// uses it (the spool writer owns the daemon's write connection).
final class SQLiteConnection {
    let handle: OpaquePointer
    let path: String
    private var statements: [String: SQLiteStatement] = [:]

    enum OpenMode {
        case readWrite
        case readOnly
    }

    /// How the connection's writes reach its files.
    enum Writes {
        /// SQLite's default: one write system call per WAL frame header, page or checkpointed page.
        case direct
        /// Consecutive writes gathered until the file is synced (``CSpoolVFS``). Only for connections
        /// with `PRAGMA synchronous = FULL`, whose every commit syncs the WAL before other connections
        /// can see it; the bytes on disk are the same, with a fraction of the system calls.
        case coalescedUntilSync
    }

    init(path: String, mode: OpenMode, writes: Writes = .direct) throws(SQLiteError) {
        var db: OpaquePointer?
        let flags =
            mode == .readOnly
            ? SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX
            : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        var vfs: String?
        if writes == .coalescedUntilSync {
            let registered = cspool_register_coalescing_vfs()
            guard registered == SQLITE_OK else {
                throw SQLiteError(
                    code: registered & 0xFF, extendedCode: registered, message: String(cString: sqlite3_errstr(registered)),
                    context: "registering the spool's write-coalescing VFS")
            }
            vfs = CSPOOL_COALESCING_VFS_NAME
        }
        let rc = sqlite3_open_v2(path, &db, flags, vfs)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(db)
            throw SQLiteError(code: rc & 0xFF, extendedCode: rc, message: message, context: "opening \(path)")
        }
        sqlite3_extended_result_codes(db, 1)
        self.handle = db
        self.path = path
    }

    deinit {
        statements.removeAll()
        sqlite3_close_v2(handle)
    }

    func error(_ rc: Int32, _ context: @autoclosure () -> String) -> SQLiteError {
        SQLiteError(
            code: rc & 0xFF, extendedCode: sqlite3_extended_errcode(handle),
            message: String(cString: sqlite3_errmsg(handle)), context: context())
    }

    /// Runs one or more statements that return no rows.
    func execute(_ sql: String) throws(SQLiteError) {
        let rc = sqlite3_exec(handle, sql, nil, nil, nil)
        guard rc == SQLITE_OK else { throw error(rc, "running \(sql.prefix(60))") }
    }

    /// A cached prepared statement for `sql`, reset and ready to bind.
    func prepared(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        if let statement = statements[sql] {
            statement.reset()
            return statement
        }
        let statement = try SQLiteStatement(connection: self, sql: sql)
        statements[sql] = statement
        return statement
    }

    /// The first column of the first row of `sql`, as an integer (0 when there is no row).
    func scalar(_ sql: String) throws(SQLiteError) -> Int64 {
        let statement = try prepared(sql)
        defer { statement.reset() }
        return try statement.step() ? statement.int64(0) : 0
    }

    var changes: Int { Int(sqlite3_changes(handle)) }
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }
}

/// A prepared statement. Binding indexes start at 1, column indexes at 0, as in SQLite.
final class SQLiteStatement {
    let handle: OpaquePointer
    unowned let connection: SQLiteConnection

    init(connection: SQLiteConnection, sql: String) throws(SQLiteError) {
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v3(connection.handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard rc == SQLITE_OK, let statement else { throw connection.error(rc, "preparing \(sql.prefix(60))") }
        self.handle = statement
        self.connection = connection
    }

    deinit { sqlite3_finalize(handle) }

    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    func bind(_ index: Int32, _ value: Int64) { sqlite3_bind_int64(handle, index, value) }
    func bind(_ index: Int32, _ value: Int) { sqlite3_bind_int64(handle, index, Int64(value)) }
    func bind(_ index: Int32, _ value: Double) { sqlite3_bind_double(handle, index, value) }
    func bind(_ index: Int32, _ value: String) { sqlite3_bind_text(handle, index, value, -1, csqlite_transient()) }
    func bind(_ index: Int32, _ value: String?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(handle, index) }
    }
    func bind(_ index: Int32, _ value: Int?) {
        if let value { bind(index, value) } else { sqlite3_bind_null(handle, index) }
    }
    func bindNull(_ index: Int32) { sqlite3_bind_null(handle, index) }

    /// Binds bytes without copying them: they must stay alive and unchanged until the statement is reset.
    func bindBlobNoCopy(_ index: Int32, _ bytes: UnsafeRawBufferPointer) {
        sqlite3_bind_blob64(
            handle, index, bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1), sqlite3_uint64(bytes.count), csqlite_static())
    }

    /// Steps once: `true` when a row is available, `false` when done.
    @discardableResult
    func step() throws(SQLiteError) -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.error(rc, "executing \(String(cString: sqlite3_sql(handle)).prefix(60))")
        }
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
    func int(_ column: Int32) -> Int { Int(sqlite3_column_int64(handle, column)) }
    func double(_ column: Int32) -> Double { sqlite3_column_double(handle, column) }
    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
    /// `column` as a target's mode. Anything else is a damaged spool, reported rather than skipped (a
    /// target left out would never be delivered, and nothing would say why).
    func mode(_ column: Int32) throws(SQLiteError) -> AgentConfiguration.Mode {
        let text = string(column) ?? ""
        guard let mode = AgentConfiguration.Mode(rawValue: text) else {
            throw SQLiteError(
                code: SQLITE_CORRUPT, extendedCode: SQLITE_CORRUPT,
                message: "a target's mode is \"\(text)\", neither \"append\" nor \"merge\"", context: "reading the targets")
        }
        return mode
    }

    func string(_ column: Int32) -> String? {
        guard let text = sqlite3_column_text(handle, column) else { return nil }
        return String(cString: text)
    }
    /// The column's bytes, valid until the next step or reset.
    func blob(_ column: Int32) -> UnsafeRawBufferPointer {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard let pointer = sqlite3_column_blob(handle, column) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: pointer, count: count)
    }
}

import Core
import FoundationEssentials
import Glibc

/// The dead-letter queue, for the operator's `dlq` commands. Each read is one short transaction on its
/// own connection, and replay and purge work in short write transactions, so all are safe while the
/// daemon runs (SQLite makes the two writers take turns, and the daemon's turn never waits long).
public struct DeadLetterStore {
    /// One dead-letter entry: rows the API rejected (or that expired), or a whole request the API partially
    /// rejected without saying which rows (`partial`).
    public struct Entry: Sendable, Equatable {
        public var id: Int64
        public var table: String
        public var mode: AgentConfiguration.Mode
        public var primaryKey: String
        public var firstSeq: Int64
        public var rows: Int
        public var bytes: Int
        public var reason: String
        public var status: Int?
        public var errors: String
        public var warnings: String
        public var requestID: String?
        public var attempts: Int
        public var partial: Bool
        public var firstFailedAt: Date
        public var lastFailedAt: Date
        /// The rows, newline-separated compact JSON (only filled by ``show(id:)`` and ``export(table:)``).
        public var records: [UInt8] = []
        /// The requests' `config.tags` as runs of rows, `[{"from":i,"to":j,"tags":{…}}]` (0-based rows of the
        /// entry, `to` excluded); empty when the rows came without tags.
        public var tags = ""

        /// The tags as an operator reads them: `{"trace":"abc"}` when every row came with the same ones,
        /// else each run with its rows (`rows 0-2 {…}, rows 3-4 {…}`); `nil` when the rows had none.
        public var tagsSummary: String? {
            guard !tags.isEmpty, case .array(let runs)? = try? Array(tags.utf8).withUnsafeBytes({ try JSONValue.parse($0) }) else {
                return nil
            }
            let parts: [(from: Int, to: Int, tags: String)] = runs.compactMap { run in
                guard case .number(let from)? = run["from"], case .number(let to)? = run["to"], let tags = run["tags"],
                    let first = Int(from), let end = Int(to)
                else { return nil }
                return (first, end, JSONCompactor.render(tags))
            }
            if parts.count == 1, parts[0].from == 0, parts[0].to == self.rows { return parts[0].tags }
            return parts.isEmpty ? nil : parts.map { "rows \($0.from)-\($0.to - 1) \($0.tags)" }.joined(separator: ", ")
        }
    }

    /// Which entries a command acts on.
    public enum Selection: Sendable {
        case ids([Int64])
        case table(String)
        case all
        case olderThan(TimeInterval)

        var sql: (clause: String, bind: (SQLiteStatement) -> Void) {
            switch self {
            case .ids(let ids):
                let list = ids.map(String.init).joined(separator: ",")
                return ("d.id IN (\(list.isEmpty ? "NULL" : list))", { _ in })
            case .table(let table):
                return (TableNameFilter.condition(column: "t.table_name", parameter: 1), { $0.bind(1, TableNameFilter.bound(table)) })
            case .all:
                return ("1", { _ in })
            case .olderThan(let age):
                let cutoff = Date().timeIntervalSince1970 - age
                return ("d.last_failed_at < ?1", { $0.bind(1, cutoff) })
            }
        }
    }

    package let path: String

    public init(path: String) {
        self.path = path
    }

    private static let columns = """
        d.id, t.table_name, t.mode, t.primary_key, d.first_seq, d.record_count, d.byte_count, d.reason, d.http_status,
        coalesce(d.errors, '[]'), coalesce(d.warnings, '[]'), d.request_id, d.attempts, d.partial, d.first_failed_at, d.last_failed_at,
        d.tags
        """

    private static func entry(_ row: SQLiteStatement, withRecords: Bool) throws(SQLiteError) -> Entry {
        Entry(
            id: row.int64(0), table: row.string(1) ?? "", mode: try row.mode(2), primaryKey: row.string(3) ?? "",
            firstSeq: row.int64(4), rows: row.int(5), bytes: row.int(6), reason: row.string(7) ?? "",
            status: row.isNull(8) ? nil : row.int(8), errors: row.string(9) ?? "[]", warnings: row.string(10) ?? "[]",
            requestID: row.string(11), attempts: row.int(12), partial: row.int(13) != 0,
            firstFailedAt: Date(timeIntervalSince1970: row.double(14)), lastFailedAt: Date(timeIntervalSince1970: row.double(15)),
            records: withRecords ? Array(row.blob(17)) : [], tags: row.string(16) ?? "")
    }

    private func withDatabase<T>(write: Bool, _ body: (SQLiteConnection) throws -> T) throws(SpoolError) -> T {
        try SpoolDatabase.mapErrors(path: path, .storage) {
            let db = write ? try SpoolDatabase.openForMaintenance(path: path) : try SpoolDatabase.openForReading(path: path)
            try db.execute(write ? "BEGIN IMMEDIATE" : "BEGIN")
            do {
                let result = try body(db)
                try db.execute("COMMIT")
                return result
            } catch {
                try? db.execute("ROLLBACK")
                throw error
            }
        }
    }

    /// Entries, oldest first, optionally for one table.
    public func list(table: String? = nil) throws(SpoolError) -> [Entry] {
        try withDatabase(write: false) { db in
            let select = try db.prepared(
                """
                SELECT \(Self.columns) FROM dead_letters d JOIN targets t ON t.id = d.target_id
                WHERE \(TableNameFilter.condition(column: "t.table_name", parameter: 1)) ORDER BY d.id
                """)
            defer { select.reset() }
            select.bind(1, TableNameFilter.bound(table))
            var entries: [Entry] = []
            while try select.step() { entries.append(try Self.entry(select, withRecords: false)) }
            return entries
        }
    }

    /// One entry with its rows, or `nil`.
    public func show(id: Int64) throws(SpoolError) -> Entry? {
        try withDatabase(write: false) { db in
            let select = try db.prepared(
                "SELECT \(Self.columns), d.records FROM dead_letters d JOIN targets t ON t.id = d.target_id WHERE d.id = ?1")
            defer { select.reset() }
            select.bind(1, id)
            return try select.step() ? try Self.entry(select, withRecords: true) : nil
        }
    }

    /// The next entries with their rows for export, in order after entry `id` (0: from the first), up to
    /// about `maxBytes` of rows (always at least one entry). Each call is one short read: the caller writes
    /// the rows out between calls, so a slow reader of the export (a pager, a pipe over ssh) never holds a
    /// snapshot that keeps the daemon's WAL from being checkpointed. Entries added meanwhile come after.
    ///
    /// With `rejectedOnly`, only entries whose rows are all known to be rejected by the API: not partial
    /// entries (they also hold rows the API wrote), nor rows that expired without an answer.
    public func export(
        table: String?, rejectedOnly: Bool = false, after id: Int64, maxBytes: Int = 16 << 20
    ) throws(SpoolError) -> [Entry] {
        try withDatabase(write: false) { db in
            let select = try db.prepared(
                """
                SELECT \(Self.columns), d.records FROM dead_letters d JOIN targets t ON t.id = d.target_id
                WHERE d.id > ?3 AND \(TableNameFilter.condition(column: "t.table_name", parameter: 1)) AND (?2 = 0 OR (d.partial = 0 AND d.http_status IS NOT NULL))
                ORDER BY d.id
                """)
            defer { select.reset() }
            select.bind(1, TableNameFilter.bound(table))
            select.bind(2, rejectedOnly ? 1 : 0)
            select.bind(3, id)
            var entries: [Entry] = []
            var bytes = 0
            while bytes < maxBytes, try select.step() {
                let entry = try Self.entry(select, withRecords: true)
                bytes += entry.records.count
                entries.append(entry)
            }
            return entries
        }
    }

    /// What ``replay(_:includeWritten:)`` did.
    public struct Replay: Sendable, Equatable {
        public var entries = 0
        public var rows = 0
        /// Partial entries selected without `includeWritten` (id, rows): nothing was replayed.
        public var refusedPartial: [(id: Int64, rows: Int)] = []
        /// Ids the selection names that are not in the dead-letter queue: nothing was replayed.
        public var missing: [Int64] = []

        public static func == (lhs: Replay, rhs: Replay) -> Bool {
            lhs.entries == rhs.entries && lhs.rows == rhs.rows && lhs.refusedPartial.map(\.id) == rhs.refusedPartial.map(\.id)
                && lhs.missing == rhs.missing
        }
    }

    /// What ``purge(_:)`` did.
    public struct Purge: Sendable, Equatable {
        public var entries = 0
        public var rows = 0
        /// Ids the selection names that are not in the dead-letter queue: nothing was purged.
        public var missing: [Int64] = []
    }

    /// The ids `selection` names that no entry has (none unless it names ids), in the order given.
    private static func missingIDs(_ selection: Selection, db: SQLiteConnection) throws -> [Int64] {
        guard case .ids(let ids) = selection else { return [] }
        let exists = try db.prepared("SELECT 1 FROM dead_letters WHERE id = ?1")
        defer { exists.reset() }
        var missing: [Int64] = []
        for id in ids {
            exists.bind(1, id)
            if try !exists.step() { missing.append(id) }
            exists.reset()
        }
        return missing
    }

    /// About how many bytes of rows one transaction of ``replay(_:includeWritten:bytesPerTransaction:afterEachTransaction:)``
    /// or ``purge(_:bytesPerTransaction:)`` moves. The daemon's commits wait while the CLI holds the write
    /// lock (and fail after its 10 s busy timeout), so each transaction stays short whatever the size of
    /// the dead-letter queue: a few milliseconds per MiB, one fsync each.
    public static let bytesPerTransaction = 4 << 20

    /// One selected entry, as replay and purge plan their transactions.
    private struct PlannedEntry {
        var id: Int64
        var rows: Int
        var bytes: Int
        var partial: Bool
    }

    /// The entries `selection` names now, in replay order (by target, then as they were queued), and the
    /// ids it names that no entry has. One short read: what is planned is fixed here, so entries dead-lettered
    /// while a replay runs (its own rows rejected again, say) wait for the next command.
    private func plan(_ selection: Selection) throws(SpoolError) -> (entries: [PlannedEntry], missing: [Int64]) {
        try withDatabase(write: false) { db in
            let missing = try Self.missingIDs(selection, db: db)
            guard missing.isEmpty else { return ([], missing) }
            let (clause, bind) = selection.sql
            let select = try db.prepared(
                """
                SELECT d.id, d.record_count, d.byte_count, d.partial FROM dead_letters d JOIN targets t ON t.id = d.target_id
                WHERE \(clause) ORDER BY d.target_id, d.first_seq, d.id
                """)
            defer { select.reset() }
            bind(select)
            var entries: [PlannedEntry] = []
            while try select.step() {
                entries.append(PlannedEntry(id: select.int64(0), rows: select.int(1), bytes: select.int(2), partial: select.int(3) != 0))
            }
            return (entries, [])
        }
    }

    /// `entries` cut, in order, into runs of about `maxBytes` of rows (at least one entry each).
    private static func transactions(_ entries: [PlannedEntry], maxBytes: Int) -> [ArraySlice<PlannedEntry>] {
        var result: [ArraySlice<PlannedEntry>] = []
        var start = entries.startIndex
        var bytes = 0
        for index in entries.indices {
            if index > start, bytes + entries[index].bytes > maxBytes {
                result.append(entries[start..<index])
                (start, bytes) = (index, 0)
            }
            bytes += entries[index].bytes
        }
        if start < entries.endIndex { result.append(entries[start...]) }
        return result
    }

    /// `error`, from a transaction after others had committed: says what was already done, so the
    /// operator knows that running the command again finishes it.
    private static func interrupted(_ error: SpoolError, after entries: Int, rows: Int, _ verb: String) -> SpoolError {
        guard entries > 0 else { return error }
        return SpoolError(
            error.code, path: error.path,
            "\(error.message); \(entries) entries (\(rows) rows) had been \(verb) before this, the others are still in the dead-letter queue: run the command again for them",
            cause: error)
    }

    /// Puts the selected entries' rows back at the end of their target's queue, in their original order,
    /// and removes the entries.
    ///
    /// The work is done in transactions of about `bytesPerTransaction` of rows, so the daemon's commits
    /// never wait long. Each entry moves whole: after a crash or an error it is either back in the queue
    /// or still a dead letter, never both or neither; the error says how many had moved. An entry purged
    /// or replayed by another command meanwhile is skipped. `afterEachTransaction` hears the running
    /// totals after each commit.
    ///
    /// - Important: A partial entry also holds rows the API wrote; replaying it writes them again. Unless
    ///   `includeWritten` is set, a selection with a partial entry replays nothing and names them. A
    ///   selection naming an id that is not in the queue replays nothing either (a mistyped id is not a
    ///   success).
    public func replay(
        _ selection: Selection, includeWritten: Bool = false, bytesPerTransaction: Int = Self.bytesPerTransaction,
        afterEachTransaction: (Replay) -> Void = { _ in }
    ) throws(SpoolError) -> Replay {
        let (planned, missing) = try plan(selection)
        guard missing.isEmpty else { return Replay(missing: missing) }
        let partial = planned.filter(\.partial).map { (id: $0.id, rows: $0.rows) }
        guard partial.isEmpty || includeWritten else { return Replay(refusedPartial: partial) }
        var done = Replay()
        for transaction in Self.transactions(planned, maxBytes: bytesPerTransaction) {
            do {
                let moved = try withDatabase(write: true) { db in try Self.replay(transaction.map(\.id), db: db) }
                done.entries += moved.entries
                done.rows += moved.rows
            } catch {
                throw Self.interrupted(error, after: done.entries, rows: done.rows, "replayed")
            }
            afterEachTransaction(done)
        }
        return done
    }

    /// Moves the entries `ids` (those still there) back into their targets' logs, in the order given.
    private static func replay(_ ids: [Int64], db: SQLiteConnection) throws -> (entries: Int, rows: Int) {
        let select = try db.prepared("SELECT target_id, record_count, records, tags FROM dead_letters WHERE id = ?1")
        let delete = try db.prepared("DELETE FROM dead_letters WHERE id = ?1")
        let now = Date().timeIntervalSince1970
        var targets: Set<Int64> = []
        var (entries, rows) = (0, 0)
        for id in ids {
            select.bind(1, id)
            defer { select.reset() }
            guard try select.step() else { continue }
            let (target, count, tags) = (select.int64(0), select.int(1), select.string(3) ?? "")
            let records = Array(select.blob(2))
            // Back into the log as they came: in order, each run of rows with its tags.
            for run in tagRuns(records, tags: tags) {
                _ = try SegmentLog.append(records[run.bytes], count: run.count, targetID: target, tags: run.tags, at: now, db: db)
            }
            delete.bind(1, id)
            try delete.step()
            delete.reset()
            targets.insert(target)
            (entries, rows) = (entries + 1, rows + count)
        }
        for target in targets { try TargetLog.settle(target, db: db) }
        return (entries, rows)
    }

    /// An entry's rows (each followed by `\n`) as runs of one tag set, from its `tags` column
    /// (`[{"from":i,"to":j,"tags":{…}}]`, ``SpooledRecords/tagRunsJSON``): byte range, row count, tags.
    package static func tagRuns(_ records: [UInt8], tags json: String) -> [(bytes: Range<Int>, count: Int, tags: String)] {
        var ends: [Int] = []
        for (offset, byte) in records.enumerated() where byte == UInt8(ascii: "\n") { ends.append(offset + 1) }
        var tagsOf = [String](repeating: "", count: ends.count)
        if !json.isEmpty, case .array(let runs)? = try? Array(json.utf8).withUnsafeBytes({ try JSONValue.parse($0) }) {
            for run in runs {
                guard case .number(let from)? = run["from"], case .number(let to)? = run["to"], let tags = run["tags"],
                    let first = Int(from), let end = Int(to), first >= 0, first <= end
                else { continue }
                for row in first..<min(end, tagsOf.count) { tagsOf[row] = JSONCompactor.render(tags) }
            }
        }
        var result: [(bytes: Range<Int>, count: Int, tags: String)] = []
        var start = 0
        for row in tagsOf.indices where row + 1 == tagsOf.count || tagsOf[row + 1] != tagsOf[row] {
            let firstByte = start == 0 ? 0 : ends[start - 1]
            result.append((firstByte..<ends[row], row + 1 - start, tagsOf[row]))
            start = row + 1
        }
        return result
    }

    /// Deletes the selected entries for good, in transactions of about `bytesPerTransaction` of rows (see
    /// ``replay(_:includeWritten:bytesPerTransaction:afterEachTransaction:)``). A selection naming an id
    /// that is not in the queue purges nothing and names it.
    public func purge(_ selection: Selection, bytesPerTransaction: Int = Self.bytesPerTransaction) throws(SpoolError) -> Purge {
        let (planned, missing) = try plan(selection)
        guard missing.isEmpty else { return Purge(missing: missing) }
        var done = Purge()
        for transaction in Self.transactions(planned, maxBytes: bytesPerTransaction) {
            do {
                let purged = try withDatabase(write: true) { db in
                    let delete = try db.prepared("DELETE FROM dead_letters WHERE id = ?1")
                    var purged = Purge()
                    for entry in transaction {
                        delete.bind(1, entry.id)
                        try delete.step()
                        delete.reset()
                        // An entry replayed or purged by another command meanwhile is not counted.
                        if db.changes == 1 { (purged.entries, purged.rows) = (purged.entries + 1, purged.rows + entry.rows) }
                    }
                    return purged
                }
                // Counted once committed: a transaction rolled back purged nothing.
                (done.entries, done.rows) = (done.entries + purged.entries, done.rows + purged.rows)
            } catch {
                throw Self.interrupted(error, after: done.entries, rows: done.rows, "purged")
            }
        }
        return done
    }
}

import Core
import FoundationEssentials
import Glibc

/// The dead-letter queue, for the operator's `dlq` commands. Each call is one transaction on its own
/// connection, so it is safe while the daemon runs (SQLite makes the two writers take turns).
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
                return ("t.table_name = ?1", { $0.bind(1, table) })
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
        coalesce(d.errors, '[]'), coalesce(d.warnings, '[]'), d.request_id, d.attempts, d.partial, d.first_failed_at, d.last_failed_at
        """

    private static func entry(_ row: SQLiteStatement, withRecords: Bool) throws(SQLiteError) -> Entry {
        Entry(
            id: row.int64(0), table: row.string(1) ?? "", mode: try row.mode(2), primaryKey: row.string(3) ?? "",
            firstSeq: row.int64(4), rows: row.int(5), bytes: row.int(6), reason: row.string(7) ?? "",
            status: row.isNull(8) ? nil : row.int(8), errors: row.string(9) ?? "[]", warnings: row.string(10) ?? "[]",
            requestID: row.string(11), attempts: row.int(12), partial: row.int(13) != 0,
            firstFailedAt: Date(timeIntervalSince1970: row.double(14)), lastFailedAt: Date(timeIntervalSince1970: row.double(15)),
            records: withRecords ? Array(row.blob(16)) : [])
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
                WHERE ?1 IS NULL OR t.table_name = ?1 ORDER BY d.id
                """)
            defer { select.reset() }
            select.bind(1, table)
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
                WHERE d.id > ?3 AND (?1 IS NULL OR t.table_name = ?1) AND (?2 = 0 OR (d.partial = 0 AND d.http_status IS NOT NULL))
                ORDER BY d.id
                """)
            defer { select.reset() }
            select.bind(1, table)
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

    /// Puts the selected entries' rows back at the end of their target's queue, in their original order,
    /// and removes the entries — all in one transaction.
    ///
    /// - Important: A partial entry also holds rows the API wrote; replaying it writes them again. Unless
    ///   `includeWritten` is set, a selection with a partial entry replays nothing and names them. A
    ///   selection naming an id that is not in the queue replays nothing either (a mistyped id is not a
    ///   success).
    public func replay(_ selection: Selection, includeWritten: Bool = false) throws(SpoolError) -> Replay {
        try withDatabase(write: true) { db in
            let missing = try Self.missingIDs(selection, db: db)
            guard missing.isEmpty else { return Replay(missing: missing) }
            let (clause, bind) = selection.sql
            let select = try db.prepared(
                """
                SELECT d.id, d.target_id, d.record_count, d.records, d.partial, d.tags FROM dead_letters d
                JOIN targets t ON t.id = d.target_id
                WHERE \(clause) ORDER BY d.target_id, d.first_seq, d.id
                """)
            bind(select)
            var picked: [(id: Int64, target: Int64, count: Int, records: [UInt8], tags: String)] = []
            var partial: [(id: Int64, rows: Int)] = []
            while try select.step() {
                picked.append((select.int64(0), select.int64(1), select.int(2), Array(select.blob(3)), select.string(5) ?? ""))
                if select.int(4) != 0 { partial.append((select.int64(0), select.int(2))) }
            }
            select.reset()
            guard partial.isEmpty || includeWritten else { return Replay(refusedPartial: partial) }
            let delete = try db.prepared("DELETE FROM dead_letters WHERE id = ?1")
            let now = Date().timeIntervalSince1970
            for entry in picked {
                // Back into the log as they came: in order, each run of rows with its tags.
                for run in Self.tagRuns(entry.records, tags: entry.tags) {
                    _ = try SegmentLog.append(
                        entry.records[run.bytes], count: run.count, targetID: entry.target, tags: run.tags, at: now, db: db)
                }
                delete.bind(1, entry.id)
                try delete.step()
                delete.reset()
            }
            for target in Set(picked.map(\.target)) { try TargetLog.settle(target, db: db) }
            return Replay(entries: picked.count, rows: picked.reduce(0) { $0 + $1.count })
        }
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

    /// Deletes the selected entries for good. A selection naming an id that is not in the queue purges
    /// nothing and names it.
    public func purge(_ selection: Selection) throws(SpoolError) -> Purge {
        try withDatabase(write: true) { db in
            let missing = try Self.missingIDs(selection, db: db)
            guard missing.isEmpty else { return Purge(missing: missing) }
            let (clause, bind) = selection.sql
            let count = try db.prepared(
                "SELECT count(*), coalesce(sum(d.record_count), 0) FROM dead_letters d JOIN targets t ON t.id = d.target_id WHERE \(clause)"
            )
            bind(count)
            _ = try count.step()
            let result = Purge(entries: count.int(0), rows: count.int(1))
            count.reset()
            let delete = try db.prepared(
                "DELETE FROM dead_letters WHERE id IN (SELECT d.id FROM dead_letters d JOIN targets t ON t.id = d.target_id WHERE \(clause))"
            )
            bind(delete)
            try delete.step()
            delete.reset()
            return result
        }
    }
}

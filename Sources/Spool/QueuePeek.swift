import FoundationEssentials
import Glibc

/// The oldest pending rows of each target, with their age and the state of the batch holding them, so
/// an operator can see what is stuck without opening SQLite.
public enum QueuePeek {
    public struct Row: Sendable {
        public var table: String
        public var seq: Int64
        public var ageSeconds: Double
        public var batchID: String?
        public var attempts: Int
        public var lastStatus: Int?
        public var lastError: String?
        public var record: String
    }

    public static func read(path: String, table: String?, limit: Int) throws(SpoolError) -> [Row] {
        try SpoolDatabase.mapErrors(path: path, .storage) {
            let db = try SpoolDatabase.openForReading(path: path)
            try db.execute("BEGIN")
            defer { try? db.execute("COMMIT") }
            let targets = try db.prepared(
                "SELECT id, table_name, delivered_seq FROM targets WHERE \(TableNameFilter.condition(column: "table_name", parameter: 1)) ORDER BY table_name, id"
            )
            targets.bind(1, TableNameFilter.bound(table))
            var list: [(Int64, String, Int64)] = []
            while try targets.step() { list.append((targets.int64(0), targets.string(1) ?? "", targets.int64(2))) }
            targets.reset()
            let now = Date().timeIntervalSince1970
            var rows: [Row] = []
            for (id, name, delivered) in list where limit > 0 {
                var batches: [(Range<Int64>, String, Int, Int?, String?)] = []
                let open = try db.prepared(
                    "SELECT first_seq, end_seq, id, attempts, last_status, last_error FROM batches WHERE target_id = ?1")
                open.bind(1, id)
                while try open.step() {
                    batches.append(
                        (
                            open.int64(0)..<open.int64(1), open.string(2) ?? "", open.int(3), open.isNull(4) ? nil : open.int(4),
                            open.string(5)
                        ))
                }
                open.reset()
                var done: [Range<Int64>] = []
                let ranges = try db.prepared("SELECT first_seq, end_seq FROM delivered_ranges WHERE target_id = ?1")
                ranges.bind(1, id)
                while try ranges.step() { done.append(ranges.int64(0)..<ranges.int64(1)) }
                ranges.reset()
                let segments = try db.prepared(
                    "SELECT s.first_seq, s.appended_at, \(SegmentLog.records) FROM segments s WHERE s.target_id = ?1 AND s.first_seq + s.record_count > ?2 ORDER BY s.first_seq"
                )
                segments.bind(1, id)
                segments.bind(2, delivered)
                var taken = 0
                scan: while try segments.step() {
                    var seq = segments.int64(0)
                    let age = max(0, now - segments.double(1))
                    for line in segments.blob(2).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast() {
                        defer { seq += 1 }
                        guard seq >= delivered, !done.contains(where: { $0.contains(seq) }) else { continue }
                        let batch = batches.first { $0.0.contains(seq) }
                        rows.append(
                            Row(
                                table: name, seq: seq, ageSeconds: age, batchID: batch?.1, attempts: batch?.2 ?? 0,
                                lastStatus: batch?.3, lastError: batch?.4, record: String(decoding: line, as: UTF8.self)))
                        taken += 1
                        if taken >= limit { break scan }
                    }
                }
                segments.reset()
            }
            return rows
        }
    }
}

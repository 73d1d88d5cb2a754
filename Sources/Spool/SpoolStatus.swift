import Core
import FoundationEssentials
import Glibc

/// What the spool holds, read straight from the file (the daemon need not run).
public struct SpoolStatus: Sendable, Equatable {
    /// One target's queue.
    public struct Target: Sendable, Equatable {
        public var table: String
        public var mode: AgentConfiguration.Mode
        public var primaryKey: String
        public var tags: String
        public var pending: Int
        public var pendingBytes: Int
        /// Seconds since the oldest undelivered record was spooled; `nil` when nothing is pending.
        public var oldestAgeSeconds: Double?
        public var deadLetters: Int
        public var lastError: String?
        public var state: String?
        public var lastSuccessAt: Double?
        public var stateUntil: Double?

        /// The delivery state recorded for the target (`nil`: idle or delivering, by what is pending).
        public var deliveryState: TargetState? { TargetState(stored: state, until: stateUntil) }
    }

    public var targets: [Target]
    /// Datagram intake totals: received, rejected (invalid), dropped (valid but not stored).
    public var datagrams: (received: Int, rejected: Int, dropped: Int) = (0, 0, 0)

    public static func == (lhs: SpoolStatus, rhs: SpoolStatus) -> Bool {
        lhs.targets == rhs.targets && lhs.datagrams == rhs.datagrams
    }
    public var pending: Int { targets.reduce(0) { $0 + $1.pending } }
    public var pendingBytes: Int { targets.reduce(0) { $0 + $1.pendingBytes } }
    public var deadLetters: Int { targets.reduce(0) { $0 + $1.deadLetters } }

    /// Reads the spool at `path` read-only; safe while the daemon writes. A spool of an earlier schema is
    /// read as it is (this reads only what every version has), so `status` works between a package
    /// upgrade and the daemon's restart.
    public static func read(path: String, now: Date = Date()) throws(SpoolError) -> SpoolStatus {
        let db = try SpoolDatabase.openForReading(path: path, acceptingOlderSchema: true)
        return try SpoolDatabase.mapErrors(path: path) {
            try db.execute("BEGIN")
            defer { try? db.execute("COMMIT") }
            let select = try db.prepared(
                """
                SELECT t.table_name, t.mode, t.primary_key, t.tags,
                       \(TargetLog.end) - t.delivered_seq
                         - (SELECT coalesce(sum(end_seq - first_seq), 0) FROM delivered_ranges r WHERE r.target_id = t.id),
                       \(TargetLog.storedBytes),
                       (SELECT min(appended_at) FROM segments s WHERE s.target_id = t.id),
                       (SELECT coalesce(sum(record_count), 0) FROM dead_letters d WHERE d.target_id = t.id),
                       t.last_error, t.state, t.last_success_at, t.state_until
                FROM targets t ORDER BY t.table_name, t.mode, t.primary_key, t.tags
                """)
            var targets: [Target] = []
            while try select.step() {
                let pending = select.int(4)
                targets.append(
                    Target(
                        table: select.string(0) ?? "", mode: try select.mode(1), primaryKey: select.string(2) ?? "",
                        tags: select.string(3) ?? "", pending: pending, pendingBytes: select.int(5),
                        oldestAgeSeconds: pending > 0 && !select.isNull(6) ? max(0, now.timeIntervalSince1970 - select.double(6)) : nil,
                        deadLetters: select.int(7), lastError: select.string(8), state: select.string(9),
                        lastSuccessAt: select.isNull(10) ? nil : select.double(10),
                        stateUntil: select.isNull(11) ? nil : select.double(11)))
            }
            select.reset()
            var status = SpoolStatus(targets: targets)
            let counters = try db.prepared("SELECT name, value FROM counters")
            while try counters.step() {
                switch counters.string(0) {
                case "datagrams_received": status.datagrams.received = counters.int(1)
                case "datagrams_rejected": status.datagrams.rejected = counters.int(1)
                case "datagrams_dropped": status.datagrams.dropped = counters.int(1)
                default: break
                }
            }
            counters.reset()
            return status
        }
    }
}

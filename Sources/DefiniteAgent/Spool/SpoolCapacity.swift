import Synchronization

/// Bytes of records the spool holds (pending plus dead letters) against `[spool] max_bytes`.
///
/// Intake reserves a request's bytes before queueing it for the writer; a request that would pass the
/// limit is refused with 507 and nothing already spooled is touched. The writer turns reservations into
/// committed bytes; delivery releases them as rows leave the spool.
public final class SpoolCapacity: Sendable {
    public let limit: Int
    private let used: Atomic<Int>

    public init(limit: Int, used: Int = 0) {
        self.limit = limit
        self.used = Atomic(used)
    }

    /// Bytes held or reserved now.
    public var usedBytes: Int { used.load(ordering: .relaxed) }

    /// Reserves `bytes` if they fit under the limit.
    public func reserve(_ bytes: Int) -> Bool {
        var current = used.load(ordering: .relaxed)
        while true {
            guard current + bytes <= limit else { return false }
            let (exchanged, original) = used.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Gives back bytes that were reserved but not stored, or that left the spool.
    public func release(_ bytes: Int) {
        used.subtract(bytes, ordering: .relaxed)
    }
}

import Synchronization

/// Bytes of records the spool holds (pending plus dead letters) against `[spool] max_bytes`.
///
/// Intake reserves a request's bytes before queueing it for the writer; a request that would pass the
/// limit is refused with 507 and nothing already spooled is touched. The writer turns reservations into
/// stored bytes when it commits (or cancels them when the commit fails); delivery releases stored bytes
/// as rows leave the spool. The writer periodically re-reads the stored total from the database, so
/// changes made by other processes (`dlq purge`) are seen without a restart.
public final class SpoolCapacity: Sendable {
    public let limit: Int
    private let stored: Atomic<Int>
    private let reserved = Atomic<Int>(0)

    public init(limit: Int, used: Int = 0) {
        self.limit = limit
        self.stored = Atomic(used)
    }

    /// Bytes held or reserved now.
    public var usedBytes: Int { stored.load(ordering: .relaxed) + reserved.load(ordering: .relaxed) }

    /// Reserves `bytes` if they fit under the limit.
    public func reserve(_ bytes: Int) -> Bool {
        var current = reserved.load(ordering: .relaxed)
        while true {
            guard stored.load(ordering: .relaxed) + current + bytes <= limit else { return false }
            let (exchanged, original) = reserved.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Reserved bytes were committed to the spool.
    func commitReservation(_ bytes: Int) {
        reserved.subtract(bytes, ordering: .relaxed)
        stored.add(bytes, ordering: .relaxed)
    }

    /// Reserved bytes were not stored after all.
    func cancelReservation(_ bytes: Int) {
        reserved.subtract(bytes, ordering: .relaxed)
    }

    /// Stored bytes left the spool (delivered, or purged from the dead letters).
    public func release(_ bytes: Int) {
        stored.subtract(bytes, ordering: .relaxed)
    }

    /// Replaces the stored total with what the database says.
    func resynchronize(stored value: Int) {
        stored.store(value, ordering: .relaxed)
    }
}

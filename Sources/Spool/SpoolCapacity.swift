import Core
import FoundationEssentials
import Glibc
import Synchronization

/// What the spool may still take: bytes of records held (pending plus dead letters) against
/// `[spool] max_bytes`, and whether the disk still has room beyond `[spool] disk_reserve`.
///
/// Intake reserves a request's bytes before queueing it for the writer (``SpoolBatch/admitLast(bytes:records:group:into:)``,
/// the one place it does); a request that would pass the limit is refused with 507 and nothing already
/// spooled is touched. Everything else happens on the writer thread, as commits become durable: a
/// commit of appends turns their reservations into stored bytes (a failed one cancels them), and a
/// delivery commit applies exactly what it changed in the database's stored total (segments delivery has
/// wholly passed leave it, dead letters join it; ``DeliveryLedger``). The count therefore equals the
/// database's total (`SpoolWriter.storedBytes`) after every commit, which a test checks. Only changes
/// made by another process (`dlq purge`, `dlq replay`) are not seen that way: the writer re-reads the
/// total when SQLite says another connection committed (`PRAGMA data_version`, looked at after each round
/// of commits), when a refusal begins and every few seconds while intake is refused, so room such a
/// command made ends a refusal without a restart.
///
/// It also knows whether intake is being refused (``refusal``): for `max_bytes`, from the first refused
/// request until that request would fit; for the disk, as the writer reports it (``diskIsFull(_:)``,
/// ``diskHasRoom()``). Only refusals touch that bookkeeping: an admitted request costs what it did before.
public final class SpoolCapacity: Sendable {
    public let limit: Int
    private let stored: Atomic<Int>
    private let reserved = Atomic<Int>(0)
    /// The size of the last request refused for `max_bytes`, while refusing; 0 otherwise.
    private let refusedRequestBytes = Atomic<Int>(0)
    private let refusals = Mutex(Refusals())
    /// Called when a refusal begins (outside any lock), so an observer need not wait for its next look.
    private let refusalBegan = Mutex<[@Sendable () -> Void]>([])

    private struct Refusals {
        var maxBytesSince: Date?
        var disk: IntakeRefusal?
        /// Set once, never cleared: see ``SpoolCapacity/spoolFileGone(_:)``.
        var fileGone: IntakeRefusal?
        /// Each refusal that began counts one, so an observer that looks now and then misses none.
        var episodes = 0
        /// The refusal that began last, as it began (kept after it ends).
        var latest: IntakeRefusal?
    }

    /// What ``observe()`` found: the refusal now (if any), and the refusals begun so far.
    public struct Observation: Sendable, Equatable {
        public var current: IntakeRefusal?
        /// How many refusals have begun since the start: a refusal that began and ended between two looks
        /// shows as a changed count.
        public var episodes: Int
        /// The refusal that began last, as it began.
        public var latest: IntakeRefusal?
    }

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
            guard stored.load(ordering: .relaxed) + current + bytes <= limit else {
                refusedForMaxBytes(bytes)
                return false
            }
            let (exchanged, original) = reserved.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Reserved bytes were committed to the spool.
    package func commitReservation(_ bytes: Int) {
        reserved.subtract(bytes, ordering: .relaxed)
        stored.add(bytes, ordering: .relaxed)
    }

    /// Reserved bytes were not stored after all.
    package func cancelReservation(_ bytes: Int) {
        reserved.subtract(bytes, ordering: .relaxed)
    }

    /// A committed change of the stored total (negative: bytes left the spool). On the writer thread.
    package func storedChanged(by bytes: Int) {
        stored.add(bytes, ordering: .relaxed)
    }

    /// Bytes held by committed records and dead letters (reservations not included).
    package var storedBytes: Int { stored.load(ordering: .relaxed) }

    /// Replaces the stored total with what the database says (changes made by another process).
    package func resynchronize(stored value: Int) {
        stored.store(value, ordering: .relaxed)
    }

    // MARK: Refusals

    /// Calls `wake` whenever a refusal begins, on the thread that refused (keep it short: it may be an event
    /// loop or the writer thread).
    package func whenRefusalBegins(_ wake: @escaping @Sendable () -> Void) {
        refusalBegan.withLock { $0.append(wake) }
    }

    private func refusedForMaxBytes(_ bytes: Int) {
        refusedRequestBytes.store(bytes, ordering: .relaxed)
        let detail = maxBytesDetail
        let began = refusals.withLock { refusals in
            guard refusals.maxBytesSince == nil else { return false }
            let now = Date()
            refusals.maxBytesSince = now
            refusals.episodes += 1
            refusals.latest = IntakeRefusal(reason: .maxBytes, since: now, detail: detail)
            return true
        }
        if began { for wake in refusalBegan.withLock({ $0 }) { wake() } }
    }

    private var maxBytesDetail: String {
        "\(ByteSize(bytes: usedBytes).approximate) held, [spool] max_bytes = \(ByteSize(bytes: limit))"
    }

    /// The writer refuses intake for want of disk (`detail`: the figures), from now until ``diskHasRoom()``.
    package func diskIsFull(_ detail: String) {
        let began = refusals.withLock { refusals in
            guard refusals.disk == nil else {
                refusals.disk?.detail = detail
                return false
            }
            refusals.disk = IntakeRefusal(reason: .diskReserve, since: Date(), detail: detail)
            refusals.episodes += 1
            refusals.latest = refusals.disk
            return true
        }
        if began { for wake in refusalBegan.withLock({ $0 }) { wake() } }
    }

    /// The writer found the spool file removed or replaced (`detail`: which, and what to do): intake is
    /// refused from now until the process ends.
    package func spoolFileGone(_ detail: String) {
        let began = refusals.withLock { refusals in
            guard refusals.fileGone == nil else { return false }
            refusals.fileGone = IntakeRefusal(reason: .spoolFileGone, since: Date(), detail: detail)
            refusals.episodes += 1
            refusals.latest = refusals.fileGone
            return true
        }
        if began { for wake in refusalBegan.withLock({ $0 }) { wake() } }
    }

    /// The writer admits intake again.
    package func diskHasRoom() {
        refusals.withLock { $0.disk = nil }
    }

    /// Why intake is refused now, if it is: a spool file gone first, then the disk (both refuse every
    /// request), else `max_bytes` while the last request it refused would still not fit.
    public var refusal: IntakeRefusal? { observe().current }

    /// ``refusal``, the count of refusals begun so far and the latest of them, read together.
    public func observe() -> Observation {
        let refused = refusedRequestBytes.load(ordering: .relaxed)
        let stillFull = refused > 0 && usedBytes + refused > limit
        let detail = maxBytesDetail
        return refusals.withLock { refusals in
            var observation = Observation(current: nil, episodes: refusals.episodes, latest: refusals.latest)
            if let gone = refusals.fileGone {
                observation.current = gone
            } else if let disk = refusals.disk {
                observation.current = disk
            } else if let since = refusals.maxBytesSince {
                if stillFull {
                    observation.current = IntakeRefusal(reason: .maxBytes, since: since, detail: detail)
                } else {
                    refusals.maxBytesSince = nil
                    // Only if no refusal counted since: a newer one keeps its bytes for the next look.
                    _ = refusedRequestBytes.compareExchange(expected: refused, desired: 0, ordering: .relaxed)
                }
            }
            return observation
        }
    }
}

import Synchronization

/// Buffers that held a batch's rows, kept for the next batch's read while delivery is busy.
///
/// A batch's rows are read into one buffer of up to `[batch] max_bytes`. glibc hands buffers that large
/// out as fresh mappings and unmaps them when freed (``MemoryTuning``), so a new buffer per batch faulted
/// in every page of it again: ~90,000 page faults for the 2,000,000 records of the peer comparison, about
/// 5 % of the agent's CPU (BENCHMARKS.md). A buffer let go while batches keep coming is taken by the next
/// read instead; once nothing is in progress the pool is emptied, so an idle daemon holds none.
///
/// Reads take buffers as they start (on a worker), so a batch waiting for a worker holds none. Reuse never
/// shares bytes: a read into a buffer that something else still holds gets a new buffer from Swift (copy
/// on write), as it would without the pool.
final class RowBufferPool: Sendable {
    /// Buffers kept at most: one per delivery worker.
    let limit: Int
    private let spare = Mutex<[[UInt8]]>([])

    init(limit: Int) {
        self.limit = limit
    }

    /// How many buffers are kept.
    var count: Int { spare.withLock { $0.count } }

    /// A kept buffer (its contents are stale: readers empty it), or an empty one.
    func take() -> [UInt8] {
        spare.withLock { $0.popLast() } ?? []
    }

    /// Keeps `buffer` for a later read, unless the pool is full or the buffer is too large to keep idle
    /// in memory (`maxCapacity`: what a batch under the current `[batch] max_bytes` needs).
    func recycle(_ buffer: [UInt8], maxCapacity: Int) {
        guard buffer.capacity > 0, buffer.capacity <= maxCapacity else { return }
        spare.withLock { spare in
            if spare.count < limit { spare.append(buffer) }
        }
    }

    /// Frees every kept buffer.
    func drain() {
        // Freed outside the lock: unmapping megabytes is not quick.
        let dropped = spare.withLock { spare in
            defer { spare = [] }
            return spare
        }
        _ = dropped
    }
}

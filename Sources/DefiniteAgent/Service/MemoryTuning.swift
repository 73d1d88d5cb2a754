import CAgentSupport

/// Keeps the daemon's resident memory bounded by what it holds now, not by what it once held.
enum MemoryTuning {
    /// glibc raises its mmap threshold after every large free, so multi-megabyte batch buffers end up
    /// in per-thread arenas and stay resident after use. A fixed threshold keeps them mmap'd and
    /// returns them to the system when freed; fewer arenas keep the rest from multiplying per thread.
    static func apply() {
        _ = cagent_tune_malloc(1 << 20, 2)
    }
}

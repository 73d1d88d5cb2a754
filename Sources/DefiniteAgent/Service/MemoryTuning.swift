import CAgentSupport

#if canImport(Glibc)
import Glibc
#endif

/// Keeps the daemon's resident memory bounded by what it holds now, not by what it once held.
enum MemoryTuning {
    /// glibc raises its mmap threshold after every large free, so multi-megabyte batch buffers end up
    /// in per-thread arenas and stay resident after use. A fixed threshold keeps them mmap'd and
    /// returns them to the system when freed; fewer arenas keep the rest from multiplying per thread.
    static func apply() {
        _ = cagent_tune_malloc(1 << 20, 2)
    }
}

/// Process limits the daemon sets for itself at start.
enum ResourceLimits {
    /// Raises the soft limit on open files to the hard limit: every writer's connection is a descriptor,
    /// and a default soft limit of 1024 would refuse connections long before memory runs short.
    /// Returns the limit in force.
    @discardableResult
    static func raiseOpenFiles() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return UInt64(limit.rlim_cur)
    }
}

/// How the daemon answers crash signals that another process sends.
enum FatalSignals {
    /// systemd ends a daemon whose watchdog expired with SIGABRT (`WatchdogSignal=`), and operators use
    /// `kill -ABRT`/`-QUIT` to get a core. The Swift runtime's backtracer catches these signals and, for
    /// one sent from outside, prints a backtrace and lets the process run on. After this call the
    /// backtrace is still printed, and then the process dies as the signal asks.
    static func endOnExternalCrashSignals() {
        _ = cagent_install_fatal_signal_handlers()
    }
}

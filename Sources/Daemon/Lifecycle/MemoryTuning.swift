import CAgentSupport
import Core
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps the daemon's resident memory bounded by what it holds now, not by what it once held.
public enum MemoryTuning {
    /// glibc raises its mmap threshold after every large free, so multi-megabyte batch buffers end up
    /// in per-thread arenas and stay resident after use. A fixed threshold keeps them mmap'd and
    /// returns them to the system when freed. One arena for all threads: each arena keeps its own free
    /// fragments resident, and with the event loops, the writer and the delivery workers each in their
    /// own the daemon held ~5 MiB more at its peak (bench, end to end).
    ///
    /// - Important: Call it first thing in `main`, while the process has one thread: glibc gives a
    ///   thread its own arena on first use and never takes one back, so a later call cannot merge those
    ///   already made (an earlier version called it from the async daemon and ended up with 5 arenas).
    public static func apply() {
        _ = cagent_tune_malloc(1 << 20, 1)
    }

    /// Once the daemon is ready: gives back the heap start-up freed, and unmaps the code and constants
    /// start-up touched (``cagent_release_clean_file_pages``), which the kernel maps 64 KiB at a time
    /// and which an idle daemon never runs again. What the daemon runs after that maps again from the page
    /// cache on first use. Returns the KiB unmapped.
    @discardableResult
    static func releaseStartupPages() -> Int {
        _ = cagent_trim_heap()
        return cagent_release_clean_file_pages()
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

/// The event loops, which serve every listener's connections: one per core, named `intake-0`, `intake-1`, …
/// (NIO would call them `NIO-ELT-…`), at intake's priority (``IntakePriority``).
enum IntakeEventLoops {
    static func make() -> MultiThreadedEventLoopGroup {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        for (index, loop) in group.makeIterator().enumerated() {
            loop.execute { NamedThread.nameCurrentThread("intake-\(index)") }
        }
        IntakePriority.yieldToDelivery(group)
        return group
    }
}

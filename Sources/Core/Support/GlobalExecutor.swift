import CAgentSupport
import NIOCore

/// Where Swift concurrency runs the daemon's tasks: threads of its own, named `async-0`, `async-1`, …
///
/// On Linux the runtime would run them on libdispatch's global queues, and the first worker thread of
/// those starts libdispatch's pool monitor, a timer that wakes the process every second for as long as it
/// runs: an idle daemon could never sleep longer. The pool here waits on a condition variable for a job or
/// the next `Task.sleep` deadline, so an idle daemon does not wake at all. The daemon's own blocking work
/// never runs on it (it has its threads: the writer, delivery, the event loops, the thread pool), and its
/// periodic loops wait on threads of their own rather than in sleeping tasks (see ``NotifyService``).
public enum GlobalExecutor {
    /// Takes over the global executor. Call it first thing in `main`, before anything awaits; the main
    /// actor stays on the main queue.
    public static func install() {
        _ = cagent_install_global_executor(Int32(max(4, System.coreCount)))
    }
}

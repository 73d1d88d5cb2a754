import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// How the event loops (intake) share the CPU with delivery.
package enum IntakePriority {
    /// The nice value of the event-loop threads (set as is: the daemon's other threads run at 0 even
    /// under a unit's `Nice=`, because libdispatch sets its threads' priority itself). With 10, a faster
    /// intake took enough CPU from delivery that end to end fell to the 250,000 records/s target; 15
    /// gives delivery ~15 % of margin in the bench (BENCHMARKS.md) and still leaves intake a share on a
    /// busy host. The spool's checkpoint thread (``SpoolCheckpointer``), intake's work too, runs at it.
    package static let eventLoopNice: Int32 = 15

    /// Lowers the scheduling priority of the event-loop threads, so that when intake and delivery both
    /// want every core, delivery still gets most of its share and the backlog does not grow without
    /// bound. With CPU to spare (the usual case) the priority changes nothing: intake is never paced.
    /// On Linux `setpriority(PRIO_PROCESS, 0, …)` applies to the calling thread only.
    package static func yieldToDelivery(_ group: any EventLoopGroup) {
        for loop in group.makeIterator() {
            loop.execute { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, eventLoopNice) }
        }
    }
}

import CAgentSupport
import Foundation

/// The daemon's own threads, named so that `top -H`, `ps -L` and `/proc/PID/task/*/comm` tell them
/// apart: `writer`, `checkpointer`, `delivery` and its workers `delivery-N`, `datagram`, and the event loops
/// `intake-N`.
///
/// Foundation's `Thread.name` does not reach the kernel on Linux (a new thread keeps its creator's name),
/// so each thread names itself first thing.
enum NamedThread {
    /// The kernel keeps 15 bytes of a thread's name.
    static let maximumNameBytes = 15

    /// Starts `body` on a new thread called `name`.
    static func start(_ name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            nameCurrentThread(name)
            body()
        }
        thread.name = name
        thread.start()
    }

    /// Names the calling thread (cut to ``maximumNameBytes``).
    static func nameCurrentThread(_ name: String) {
        let bytes = Array(name.utf8.prefix(maximumNameBytes)).map { CChar(bitPattern: $0) } + [0]
        _ = cagent_name_current_thread(bytes)
    }
}

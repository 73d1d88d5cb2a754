import CAgentSupport
import Glibc

/// The daemon's own threads, named so that `top -H`, `ps -L` and `/proc/PID/task/*/comm` tell them
/// apart: `writer`, `checkpointer`, `delivery` and its workers `delivery-N`, `datagram`, and the event loops
/// `intake-N`.
///
/// Plain detached pthreads (the binary links no Foundation, so no `Thread`); each names itself first thing.
package enum NamedThread {
    /// The kernel keeps 15 bytes of a thread's name.
    package static let maximumNameBytes = 15

    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new thread called `name`.
    package static func start(_ name: String, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread: pthread_t = 0
        let result = pthread_create(
            &thread, nil,
            { context in
                let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
                NamedThread.nameCurrentThread(start.name)
                start.body()
                return nil
            }, start)
        guard result == 0 else {
            fatalError("cannot start the thread \(name): \(SystemCallError(result))")
        }
        pthread_detach(thread)
    }

    /// Blocks the calling thread for `duration` (not for async code).
    package static func sleep(for duration: Duration) {
        let (seconds, attoseconds) = max(duration, .zero).components
        var request = timespec(tv_sec: Int(clamping: seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0, errno == EINTR { request = remaining }
    }

    /// Names the calling thread (cut to ``maximumNameBytes``).
    package static func nameCurrentThread(_ name: String) {
        let bytes = Array(name.utf8.prefix(maximumNameBytes)).map { CChar(bitPattern: $0) } + [0]
        _ = cagent_name_current_thread(bytes)
    }
}

import ServiceLifecycle

/// Runs the ``SpoolWriter`` for the lifetime of the daemon. On graceful shutdown (after intake stopped,
/// since the service group stops services in reverse order) it commits what is queued, checkpoints the
/// WAL and closes the spool.
struct SpoolWriterService: Service {
    let writer: SpoolWriter

    func run() async throws {
        writer.start()
        try? await gracefulShutdown()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // shutdown() blocks until the writer thread finished; keep it off the cooperative pool.
            let thread = Thread { [writer] in
                writer.shutdown()
                continuation.resume()
            }
            thread.start()
        }
    }
}

import Foundation

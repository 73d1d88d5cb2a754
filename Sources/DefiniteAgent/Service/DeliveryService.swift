import Foundation
import Logging
import ServiceLifecycle

/// Runs the delivery workers: `[batch] concurrency` threads (`delivery-0`, `delivery-1`, …), each with its own
/// spool reader and libcurl handle, fed by one ``DeliveryScheduler``.
///
/// Stopping gracefully, no new batch starts and a request in flight may finish until the drain deadline
/// (`[service] drain_timeout` after SIGTERM); stopping at once, nothing is waited for. Whatever the API did
/// not confirm stays in the spool and is sent at the next start.
///
/// - Note: Creating it reads the spool (the scheduler recovers open batches): do it off the cooperative pool.
final class DeliveryService: DaemonPart, RunningPart {
    let scheduler: DeliveryScheduler
    private let workers: [UncheckedBox<DeliveryWorker>]
    private let logger: Logger
    /// Happens when the last worker thread has returned.
    private let workersEnded: CompletionSignal

    init(settings: LiveConfiguration, writer: SpoolWriter, key: APIKeyBox, logger: Logger) throws(SpoolError) {
        let configuration = settings.current
        scheduler = try DeliveryScheduler(spoolPath: configuration.spool.path, settings: settings, logger: logger) {
            key.withLockedValue { $0 != nil }
        }
        var workers: [UncheckedBox<DeliveryWorker>] = []
        for _ in 0..<max(1, configuration.batch.concurrency) {
            workers.append(UncheckedBox(try DeliveryWorker(scheduler: scheduler, writer: writer, settings: settings, key: key, logger: logger)))
        }
        self.workers = workers
        self.logger = logger
        self.workersEnded = CompletionSignal(count: workers.count)
    }

    func start() async throws -> any RunningPart {
        for (index, worker) in workers.enumerated() {
            NamedThread.start("delivery-\(index)") { [workersEnded] in
                worker.value.run()
                workersEnded.signal()
            }
        }
        return self
    }

    func run(drainDeadline: DrainDeadline) async throws {
        try? await gracefulShutdown()
        scheduler.stop()
        if !(await workersEnded.wait(until: drainDeadline.instant)) {
            logger.warning("delivery did not finish within the drain bound; the unconfirmed batch stays in the spool and is sent at the next start")
        }
    }
}

/// Hands a value confined to one thread over to that thread.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Runs the delivery workers: `[batch] concurrency` threads, each with its own spool reader and libcurl
/// handle, fed by one ``DeliveryScheduler``.
///
/// On graceful shutdown no new batch starts; a request in flight gets up to `drainTimeout` to finish.
/// Whatever is not confirmed stays in the spool and is sent at the next start.
final class DeliveryService: Service, Sendable {
    let scheduler: DeliveryScheduler
    private let workers: [UncheckedBox<DeliveryWorker>]
    private let logger: Logger
    private let drainTimeout: Duration

    init(settings: LiveConfiguration, writer: SpoolWriter, key: APIKeyBox, logger: Logger) throws(SpoolError) {
        let configuration = settings.current
        scheduler = try DeliveryScheduler(spoolPath: configuration.spool.path, settings: settings, logger: logger) {
            key.withLockedValue { $0 != nil }
        }
        var workers: [UncheckedBox<DeliveryWorker>] = []
        for _ in 0..<max(1, configuration.batch.concurrency) {
            workers.append(UncheckedBox(try DeliveryWorker(scheduler: scheduler, writer: writer, settings: settings, key: key, logger: logger)))
        }
        let drainTimeout = configuration.service.drainTimeout.duration
        self.workers = workers
        self.logger = logger
        self.drainTimeout = drainTimeout
    }

    func run() async throws {
        let remaining = NIOLockedValueBox(workers.count)
        let allDone = DispatchSemaphore(value: 0)
        for (index, worker) in workers.enumerated() {
            let thread = Thread {
                worker.value.run()
                if remaining.withLockedValue({ $0 -= 1; return $0 }) == 0 { allDone.signal() }
            }
            thread.name = "delivery-\(index)"
            thread.start()
        }
        try? await gracefulShutdown()
        scheduler.stop()
        let timeout = drainTimeout
        let drained = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            Thread {
                let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
                continuation.resume(returning: allDone.wait(timeout: .now() + seconds) == .success)
            }.start()
        }
        if !drained {
            logger.warning("delivery did not finish within the drain bound; the unconfirmed batch stays in the spool and is sent at the next start",
                           metadata: ["drain_timeout": "\(drainTimeout)"])
        }
    }
}

/// Hands a value confined to one thread over to that thread.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

import Core
import Delivery
import FoundationEssentials
import Glibc
import Logging
import ServiceLifecycle
import Spool

/// Runs the ``DeliveryLoop``: one thread (`delivery`) with every request in flight, and two workers
/// (`delivery-1`, `delivery-2`) for spool reads and gzip.
///
/// Stopping gracefully, no new batch starts and requests in flight may finish until the drain deadline
/// (`[service] drain_timeout` after SIGTERM); stopping at once, nothing is waited for. Whatever the API did
/// not confirm stays in the spool and is sent at the next start.
///
/// - Note: Creating it reads the spool (the loop recovers open batches): do it off the cooperative pool.
final class DeliveryService: DaemonPart, RunningPart {
    let loop: DeliveryLoop

    init(
        settings: LiveConfiguration, writer: SpoolWriter, key: APIKeyBox, confirmations: RemoteConfirmations? = nil,
        logger: Logger
    ) throws(SpoolError) {
        loop = try DeliveryLoop(settings: settings, writer: writer, key: key, confirmations: confirmations, logger: logger)
    }

    func start() async throws -> any RunningPart {
        loop.start()
        return self
    }

    func run(drainDeadline: DrainDeadline) async throws {
        try? await gracefulShutdown()
        await loop.stop { drainDeadline.instant }
    }
}

import Core
import ServiceLifecycle
import Spool

/// The ``SpoolWriter``'s thread, as a part of the daemon. It starts first and stops last (after intake and
/// delivery, which commit through it): on stop it commits what is queued, checkpoints the WAL and closes.
/// It holds the spool's ``SpoolLock`` for as long as the daemon runs.
struct SpoolWriterService: DaemonPart, RunningPart {
    let writer: SpoolWriter
    let lock: SpoolLock?

    func start() async throws -> any RunningPart {
        writer.start()
        return self
    }

    func run(drainDeadline: DrainDeadline) async throws {
        try? await gracefulShutdown()
        await writer.stop()
    }
}

/// The spool's background checkpoints (``SpoolCheckpointer``), as a part of the daemon: attached to the
/// writer after it starts, detached before it stops (the writer's final checkpoint then runs alone).
struct SpoolCheckpointerService: DaemonPart, RunningPart {
    let writer: SpoolWriter

    func start() async throws -> any RunningPart {
        await writer.startCheckpointer()
        return self
    }

    func run(drainDeadline: DrainDeadline) async throws {
        try? await gracefulShutdown()
        await writer.stopCheckpointer()
    }
}

import Core
import ServiceLifecycle

/// Runs one part as a service of the group under the ``Supervisor``: the part starts at its turn, a
/// failure to start is reported and thrown (which makes the group stop the parts already started, in
/// reverse order), and the service returns only when the group stops it (a service that returned on its own
/// would look like a crash to the group).
struct SupervisedService: Service, CustomStringConvertible {
    let index: Int
    let kind: DaemonPartKind
    let part: any DaemonPart
    let supervisor: Supervisor

    var description: String { kind.description }

    func run() async throws {
        guard await supervisor.awaitTurn(index) else {
            // Never started: wait for this part's turn to stop.
            try? await gracefulShutdown()
            return
        }
        let running: any RunningPart
        do {
            running = try await part.start()
        } catch {
            supervisor.failedToStart(index, error)
            throw error
        }
        supervisor.started(index)
        do {
            try await running.run(drainDeadline: supervisor.drainDeadline)
        } catch {
            supervisor.failed(index, error)
            throw error
        }
        if !Task.isShuttingDownGracefully, !Task.isCancelled {
            let error = PartStoppedError(part: kind.description)
            supervisor.failed(index, error)
            throw error
        }
    }
}

/// A part that stopped by itself while the daemon was not stopping (a listening socket closed under it).
struct PartStoppedError: Error, CustomStringConvertible {
    var part: String
    var description: String { "the \(part) stopped by itself" }
}

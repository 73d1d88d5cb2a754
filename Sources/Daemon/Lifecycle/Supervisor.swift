import Core
import Logging
import ServiceLifecycle
import Synchronization

/// Carries out the ``LifecycleStateMachine`` for the daemon's parts: hands out start turns, records what
/// failed (and keeps each failure's error, which the daemon exits with), answers shutdown signals, and
/// logs the milestones an operator looks for (ready, stopping, failed).
///
/// The service group does the starting and stopping itself (``SupervisedService``); this type only
/// decides, through the state machine, and wakes the part whose turn it is.
final class Supervisor: Sendable {
    private struct State {
        var machine: LifecycleStateMachine
        /// Parts waiting for their turn to start.
        var waiting: [Int: CheckedContinuation<Bool, Never>] = [:]
        /// Parts told to stop (or cancelled) before their turn came.
        var withdrawn: Set<Int> = []
        /// Every part started (the notifier, last, sent `READY=1`).
        var ready = false
        var errors: [Int: any Error] = [:]
    }

    let parts: [DaemonPartKind]
    /// Signalled when a stop begins (a signal, a failure): every listener stops accepting at once.
    let stopAccepting = CompletionSignal()
    private let drainTimeout: Duration
    private let state: Mutex<State>
    private let logger: Logger

    init(parts: [DaemonPartKind], drainTimeout: Duration, logger: Logger) {
        self.parts = parts
        self.drainTimeout = drainTimeout
        self.state = Mutex(State(machine: LifecycleStateMachine(partCount: parts.count, drainTimeout: drainTimeout)))
        self.logger = logger
    }

    /// The service group running `implementations` (one per part, in ``parts``' order) under this supervisor.
    ///
    /// A part that fails, or ends on its own, stops the whole group gracefully (in reverse order; the parts
    /// not yet started return when their turn to stop comes). A graceful stop that overruns the drain bound
    /// by `overrun` turns into cancellation (a stop at once); a cancellation that takes longer than
    /// `cancellationLimit` ends the process (swift-service-lifecycle's last resort). Shutdown signals are not
    /// the group's: the daemon hands them to ``shutdownSignalled(_:)`` and acts on the answer.
    func makeServiceGroup(
        _ implementations: [any DaemonPart], overrun: Duration = .seconds(5), cancellationLimit: Duration = .seconds(5)
    ) -> ServiceGroup {
        precondition(implementations.count == parts.count, "one implementation per part")
        let services = zip(parts, implementations).enumerated().map { index, pair in
            ServiceGroupConfiguration.ServiceConfiguration(
                service: SupervisedService(index: index, kind: pair.0, part: pair.1, supervisor: self),
                successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup,
                serviceName: pair.0.description)
        }
        var configuration = ServiceGroupConfiguration(services: services, logger: logger)
        configuration.maximumGracefulShutdownDuration = drainTimeout + overrun
        configuration.maximumCancellationDuration = cancellationLimit
        return ServiceGroup(configuration: configuration)
    }

    /// Waits until `part` may start: `true` when it may, `false` when it never will (a stop began, or the
    /// part itself is being stopped or cancelled).
    func awaitTurn(_ part: Int) async -> Bool {
        await withTaskCancellationOrGracefulShutdownHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let decision = state.withLock { state -> Bool? in
                    if state.withdrawn.contains(part) { return false }
                    switch state.machine.turn(of: part) {
                    case .start: return true
                    case .never: return false
                    case .wait:
                        state.waiting[part] = continuation
                        return nil
                    }
                }
                if let decision { continuation.resume(returning: decision) }
            }
        } onCancelOrGracefulShutdown: {
            let waiter = self.state.withLock { state in
                state.withdrawn.insert(part)
                return state.waiting.removeValue(forKey: part)
            }
            waiter?.resume(returning: false)
        }
    }

    func started(_ part: Int) {
        let (action, next) = state.withLock { state -> (LifecycleStateMachine.StartedAction, CheckedContinuation<Bool, Never>?) in
            let action = state.machine.started(part)
            if action == .ready { state.ready = true }
            guard case .startNext(let next) = action else { return (action, nil) }
            return (action, state.waiting.removeValue(forKey: next))
        }
        next?.resume(returning: true)
        if action == .ready {
            logger.info("ready: every listener accepts")
            MemoryTuning.releaseStartupPages()
        }
    }

    func failedToStart(_ part: Int, _ error: any Error) {
        let action = state.withLock { state in
            if state.errors[part] == nil { state.errors[part] = error }
            return state.machine.failedToStart(part, at: .now)
        }
        logger.error("\(error)", metadata: ["part": "\(parts[part])"])
        log(action, after: "a failed start")
    }

    func failed(_ part: Int, _ error: any Error) {
        let action = state.withLock { state in
            if state.errors[part] == nil { state.errors[part] = error }
            return state.machine.failed(part, at: .now)
        }
        logger.error("the \(parts[part]) failed: \(error)")
        log(action, after: "a failure")
    }

    private func log(_ action: LifecycleStateMachine.FailureAction, after what: String) {
        switch action {
        case .stopStartedParts(let deadline), .hastenStop(let deadline):
            stopAccepting.signal()
            logger.notice(
                "stopping the parts already started, in reverse order, after \(what)",
                metadata: ["within": "\(max(.zero, deadline - .now).loggedSeconds)"])
        case .none:
            break
        }
    }

    /// A shutdown signal (SIGTERM, SIGINT) arrived: what to do about it.
    func shutdownSignalled(_ signal: String) -> LifecycleStateMachine.SignalAction {
        let action = state.withLock { $0.machine.shutdownSignalled(at: .now) }
        switch action {
        case .stopGracefully(let deadline):
            stopAccepting.signal()
            logger.info(
                "\(signal): stopping; no new connections, answering what was read, delivery drains",
                metadata: ["drain_within": "\(max(.zero, deadline - .now).loggedSeconds)"])
        case .stopAtOnce:
            logger.warning(
                "\(signal) during the stop: stopping at once; connections still open close unanswered (nothing unanswered was acknowledged), undelivered rows stay in the spool"
            )
        case .none:
            break
        }
        return action
    }

    /// Whether every part started: the daemon is ready, and told systemd so.
    var isReady: Bool { state.withLock { $0.ready } }

    /// Whether the daemon is stopping (a shutdown signal, or a failure): systemd has heard `STOPPING=1`.
    var isStopping: Bool {
        state.withLock { state in
            switch state.machine.phase {
            case .stopping, .stoppingAtOnce: true
            default: false
            }
        }
    }

    /// The deadline every part stopping gracefully works to.
    var drainDeadline: DrainDeadline {
        DrainDeadline { [self] in
            state.withLock { $0.machine.drainDeadline(now: .now) } ?? .now
        }
    }

    /// The error the daemon ends with: the first failure's; `nil` for a clean stop.
    var exitError: (any Error)? {
        state.withLock { state in
            guard case .failure(let part) = state.machine.exit else { return nil }
            return state.errors[part]
        }
    }
}

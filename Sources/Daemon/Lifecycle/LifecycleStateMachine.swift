/// The daemon's life cycle as decisions only: which part may start, what a failed start, a failure or a
/// shutdown signal means, how long stopping may take, and how the daemon ends. No I/O and no clock of its
/// own (times are passed in), so every path is unit-tested; ``Supervisor`` carries the decisions out.
///
/// Guarantees:
/// - Parts start one at a time, in their order: a part starts only once every part before it started.
/// - Once a stop began (a signal, a failed start, a failure), no further part starts.
/// - A graceful stop has one deadline for every part: the shutdown signal plus `drainTimeout`, or, after a
///   failed start, the failure plus at most `failedStartDrain` (the daemon is ending with an error; a
///   request in flight is not worth holding up the exit, and its rows stay in the spool).
/// - A shutdown signal during a stop (a second SIGTERM, or one while a failed start unwinds) stops at once.
/// - The daemon ends cleanly only when nothing failed; otherwise with the first failure, also when a
///   signal came first (the operator needs to hear about a broken listener either way).
struct LifecycleStateMachine: Sendable {
    typealias Instant = ContinuousClock.Instant

    /// Why the daemon stops.
    enum StopReason: Equatable, Sendable {
        /// SIGTERM or SIGINT.
        case requested
        /// Part `part` could not start.
        case failedToStart(part: Int)
        /// Part `part` failed after it had started.
        case failed(part: Int)
    }

    /// Where the daemon is.
    enum Phase: Equatable, Sendable {
        /// Parts `0..<next` have started; part `next` may start.
        case starting(next: Int)
        /// Every part started.
        case running
        /// Parts are stopping gracefully, in reverse order; whatever they wait for is given up at `deadline`.
        case stopping(StopReason, deadline: Instant)
        /// Parts stop without waiting for anything (task cancellation).
        case stoppingAtOnce(StopReason)
    }

    /// Whether a part may start now.
    enum Turn: Equatable, Sendable {
        case start
        /// An earlier part has not started yet.
        case wait
        /// A stop began: the part never starts.
        case never
    }

    /// What follows a part's start.
    enum StartedAction: Equatable, Sendable {
        /// Part `next` may start now.
        case startNext(Int)
        /// That was the last part: the daemon is ready.
        case ready
        /// A stop began meanwhile: nothing more starts (the part is stopped in its turn).
        case none
    }

    /// What follows a failure.
    enum FailureAction: Equatable, Sendable {
        /// Stop every part already started, in reverse order, by `deadline`.
        case stopStartedParts(deadline: Instant)
        /// A stop is already under way; it is now cut short to `deadline`.
        case hastenStop(deadline: Instant)
        /// Stopping at once already, or an earlier failure decides the exit; nothing changes.
        case none
    }

    /// What a shutdown signal does.
    enum SignalAction: Equatable, Sendable {
        /// Stop gracefully: every part by `deadline`; parts not started never start.
        case stopGracefully(deadline: Instant)
        /// Stop at once: a second signal, or a signal while a failed start unwinds.
        case stopAtOnce
        /// Already stopping at once.
        case none
    }

    /// How the daemon ends.
    enum Exit: Equatable, Sendable {
        /// Stopped on request with every part started cleanly (or a start cut short by the request).
        case clean
        /// With the error of part `part` (its start, or its run).
        case failure(part: Int)
        /// Not over: no stop has begun.
        case notStopping
    }

    let partCount: Int
    let drainTimeout: Duration
    let failedStartDrain: Duration
    private(set) var phase: Phase
    /// The first failure; it decides the exit.
    private var firstFailure: Int?

    init(partCount: Int, drainTimeout: Duration, failedStartDrain: Duration = .seconds(1)) {
        precondition(partCount > 0, "a daemon has parts")
        self.partCount = partCount
        self.drainTimeout = drainTimeout
        self.failedStartDrain = failedStartDrain
        self.phase = .starting(next: 0)
    }

    func turn(of part: Int) -> Turn {
        switch phase {
        case .starting(let next):
            precondition(part >= next, "part \(part) asks to start again")
            return part == next ? .start : .wait
        case .running:
            preconditionFailure("every part has started")
        case .stopping, .stoppingAtOnce:
            return .never
        }
    }

    mutating func started(_ part: Int) -> StartedAction {
        switch phase {
        case .starting(let next):
            precondition(part == next, "part \(part) started out of turn (next is \(next))")
            if part + 1 == partCount {
                phase = .running
                return .ready
            }
            phase = .starting(next: part + 1)
            return .startNext(part + 1)
        case .running:
            preconditionFailure("every part has started")
        case .stopping, .stoppingAtOnce:
            // A part already starting when the stop began finishes its start; it is stopped in its turn.
            return .none
        }
    }

    mutating func failedToStart(_ part: Int, at now: Instant) -> FailureAction {
        fail(.failedToStart(part: part), part: part, deadline: now + min(drainTimeout, failedStartDrain))
    }

    mutating func failed(_ part: Int, at now: Instant) -> FailureAction {
        fail(.failed(part: part), part: part, deadline: now + drainTimeout)
    }

    private mutating func fail(_ reason: StopReason, part: Int, deadline: Instant) -> FailureAction {
        let first = firstFailure == nil
        if first { firstFailure = part }
        switch phase {
        case .starting, .running:
            phase = .stopping(reason, deadline: deadline)
            return .stopStartedParts(deadline: deadline)
        case .stopping(_, let currentDeadline):
            guard first else { return .none }
            let sooner = min(currentDeadline, deadline)
            phase = .stopping(reason, deadline: sooner)
            return .hastenStop(deadline: sooner)
        case .stoppingAtOnce:
            if first { phase = .stoppingAtOnce(reason) }
            return .none
        }
    }

    mutating func shutdownSignalled(at now: Instant) -> SignalAction {
        switch phase {
        case .starting, .running:
            let deadline = now + drainTimeout
            phase = .stopping(.requested, deadline: deadline)
            return .stopGracefully(deadline: deadline)
        case .stopping(let reason, _):
            phase = .stoppingAtOnce(reason)
            return .stopAtOnce
        case .stoppingAtOnce:
            return .none
        }
    }

    /// When parts stopping gracefully give up waiting; `nil` until a stop began. Stopping at once: no wait.
    func drainDeadline(now: Instant) -> Instant? {
        switch phase {
        case .starting, .running: return nil
        case .stopping(_, let deadline): return deadline
        case .stoppingAtOnce: return now
        }
    }

    var exit: Exit {
        if let firstFailure { return .failure(part: firstFailure) }
        switch phase {
        case .starting, .running: return .notStopping
        case .stopping, .stoppingAtOnce: return .clean
        }
    }
}

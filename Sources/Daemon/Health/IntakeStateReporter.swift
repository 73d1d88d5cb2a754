import Core
import Dispatch
import FoundationEssentials
import Glibc
import Intake
import Logging
import Metrics
import ServiceLifecycle
import Spool
import Synchronization

/// The start and end of intake refusals, from successive looks at ``SpoolCapacity/observe()``. Pure: the
/// ``IntakeStateReporter`` looks, this says what changed, the reporter tells operators.
struct RefusalTracker {
    /// What changed since the last look.
    enum Transition: Equatable {
        case began(IntakeRefusal)
        /// `lasted`: from its start to this look.
        case ended(IntakeRefusal, lasted: TimeInterval)
    }

    /// The refusal operators were last told about (still going, as far as they know).
    private(set) var current: IntakeRefusal?
    private var episodes = 0

    mutating func observe(_ observation: SpoolCapacity.Observation, now: Date) -> [Transition] {
        var transitions: [Transition] = []
        let newEpisodes = observation.episodes != episodes
        if let told = current, observation.current?.reason != told.reason || observation.current?.since != told.since {
            transitions.append(.ended(told, lasted: now.timeIntervalSince(told.since)))
            current = nil
        }
        if current == nil {
            if let refusal = observation.current {
                transitions.append(.began(refusal))
                current = refusal
            } else if newEpisodes, let brief = observation.latest {
                // Began and ended between two looks: still worth both lines.
                transitions.append(.began(brief))
                transitions.append(.ended(brief, lasted: now.timeIntervalSince(brief.since)))
            }
        }
        episodes = observation.episodes
        return transitions
    }
}

/// Tells operators whether the daemon takes records: a log line when intake refusal begins and one when it
/// ends, the `definite_agent_intake_refusing{reason}` gauge, readiness (`GET /readyz`) and the daemon state
/// file `status` reads (``DaemonStateFile``: pid and start, written at once; refusals as they change;
/// "stopping" at shutdown).
///
/// It is the part that starts after every listener: its start marks intake ready; being among the first to
/// stop, it marks it not ready as soon as a shutdown begins.
///
/// A dedicated thread (`state-reporter`) sleeps until a refusal begins, looks at the spool's capacity at
/// once, and then four times a second for its end (a refusal that begins and ends between two looks is
/// still reported, from the capacity's count of refusals); it also does the file writes, so neither an
/// event loop nor the cooperative pool ever waits on them. Idle, it never wakes up.
final class IntakeStateReporter: DaemonPart, RunningPart {
    private let capacity: SpoolCapacity
    private let readiness: IntakeReadiness
    private let spoolPath: String
    private let access: SpoolAccess
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    /// Signalled when a refusal begins, and to stop: the thread looks at once.
    private let wake = DispatchSemaphore(value: 0)
    /// Happens when the thread wrote its last state and returned.
    private let ended = CompletionSignal()

    init(capacity: SpoolCapacity, readiness: IntakeReadiness, spoolPath: String, access: SpoolAccess, logger: Logger) {
        self.capacity = capacity
        self.readiness = readiness
        self.spoolPath = spoolPath
        self.access = access
        self.logger = logger
    }

    func start() async throws -> any RunningPart {
        AgentMetrics.announce(spoolMaxBytes: capacity.limit)
        capacity.whenRefusalBegins { [wake] in wake.signal() }
        NamedThread.start("state-reporter") { [self] in
            watch()
            ended.signal()
        }
        readiness.markListening()
        return self
    }

    func run(drainDeadline: DrainDeadline) async throws {
        try? await gracefulShutdown()
        readiness.markStopping()
        stopping.store(true, ordering: .relaxed)
        wake.signal()
        _ = await ended.wait(until: drainDeadline.instant)
    }

    /// The thread's loop: writes the state file at once, then after each change and once when stopping.
    private func watch() {
        var state = DaemonState(
            pid: getpid(), processStart: DaemonStateFile.processStart(pid: getpid()) ?? 0, startedAt: Date(),
            version: AgentVersion.current)
        var tracker = RefusalTracker()
        write(state)
        while !stopping.load(ordering: .relaxed) {
            // Idle until a refusal begins (the capacity signals it); then four looks a second for its end,
            // unless only a restart ends it.
            if tracker.current?.endsWithRoom != true {
                wake.wait()
            } else {
                _ = wake.wait(timeout: .now() + .milliseconds(250))
            }
            let transitions = tracker.observe(capacity.observe(), now: Date())
            guard !transitions.isEmpty else { continue }
            transitions.forEach(report)
            state.intakeRefusal = tracker.current
            write(state)
        }
        state.stopping = true
        write(state)
    }

    private func report(_ transition: RefusalTracker.Transition) {
        switch transition {
        case .began(let refusal):
            AgentMetrics.intakeRefusing(refusal.reason).record(1)
            let metadata: Logger.Metadata = [
                "reason": "\(refusal.reason.rawValue)", "detail": "\(refusal.detail)", "spool": "\(spoolPath)",
            ]
            switch refusal.reason {
            case .maxBytes:
                logger.warning(
                    "intake refused: the spool is full ([spool] max_bytes); requests that do not fit get 507 until delivery frees space (dead letters count too: only `dlq replay` or `dlq purge` frees theirs)",
                    metadata: metadata)
            case .diskReserve:
                logger.error(
                    "intake refused: the disk holding the spool is full; requests that do not fit get 507 until delivery frees space in the spool (or other files on the disk are removed; dead letters go only with `dlq replay` or `dlq purge`)",
                    metadata: metadata)
            case .spoolFileGone:
                break  // The writer said it at critical level as it found it.
            }
        case .ended(let refusal, let lasted):
            AgentMetrics.intakeRefusing(refusal.reason).record(0)
            logger.notice(
                "intake resumed: the spool takes records again",
                metadata: [
                    "reason": "\(refusal.reason.rawValue)", "refused_for": "\(lasted.fixed(1))s",
                ])
        }
    }

    private func write(_ state: DaemonState) {
        do {
            try DaemonStateFile.write(state, spoolPath: spoolPath, access: access)
        } catch {
            logger.warning("cannot write the daemon state file: `status` may not show this daemon", metadata: ["error": "\(error)"])
        }
    }
}

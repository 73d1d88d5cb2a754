import ServiceLifecycle

/// The parts of the daemon, in the order they start; the service group stops them in the reverse order.
///
/// - writer, then checkpointer: everything after them commits through the writer.
/// - delivery: before intake, so that on SIGTERM intake stops accepting (and answers what it read) first,
///   and only then does delivery spend the drain bound on a request in flight.
/// - the listeners: the line socket, the local Stream API (its socket, then its TCP address), the datagram
///   socket, then the metrics endpoint.
/// - operator signals (SIGHUP, SIGUSR1).
/// - the systemd notifier last: READY=1 goes out only once every configured listener accepts.
package enum DaemonPartKind: Hashable, Sendable, CustomStringConvertible {
    case writer
    case checkpointer
    case delivery
    case lineSocket(String)
    case httpSocket(String)
    case httpAddress(String)
    case datagramSocket(String)
    case metrics(String)
    case operatorSignals
    /// Readiness, refusal reports and the state file `status` reads.
    case intakeState
    case notifier

    /// The parts `configuration` asks for, in start order.
    package static func startOrder(_ configuration: AgentConfiguration) -> [DaemonPartKind] {
        var parts: [DaemonPartKind] = [.writer, .checkpointer, .delivery, .lineSocket(configuration.intake.socket)]
        if !configuration.intake.httpSocket.isEmpty { parts.append(.httpSocket(configuration.intake.httpSocket)) }
        if let listen = configuration.intake.httpListen { parts.append(.httpAddress(listen)) }
        if let path = configuration.intake.datagramSocket { parts.append(.datagramSocket(path)) }
        if let listen = configuration.metrics.listen { parts.append(.metrics(listen)) }
        return parts + [.operatorSignals, .intakeState, .notifier]
    }

    /// The part as an operator knows it from the configuration, for logs and errors.
    package var description: String {
        switch self {
        case .writer: "spool writer"
        case .checkpointer: "spool checkpointer"
        case .delivery: "delivery"
        case .lineSocket(let path): "intake socket \(path)"
        case .httpSocket(let path): "local Stream API socket \(path)"
        case .httpAddress(let address): "local Stream API address \(address)"
        case .datagramSocket(let path): "datagram socket \(path)"
        case .metrics(let listen): "metrics endpoint \(listen)"
        case .operatorSignals: "operator signals"
        case .intakeState: "intake state reporter"
        case .notifier: "systemd notifier"
        }
    }
}

/// A part of the daemon: what it acquires to start (a socket, a thread), then how it serves.
package protocol DaemonPart: Sendable {
    /// Acquires what the part needs, or throws why it cannot (a ``StartupError`` for a socket). Blocking
    /// work (files, name resolution, SQLite) is done off the event loops and the cooperative pool.
    func start() async throws -> any RunningPart
}

/// A part that started.
package protocol RunningPart: Sendable {
    /// Serves until the service group stops the part, then lets go of what the part acquired: gracefully
    /// (finish what it holds, giving up at `drainDeadline`), or at once when the task is cancelled.
    func run(drainDeadline: DrainDeadline) async throws
}

/// When a part that stops gracefully gives up waiting (for connections to answer, for a request in flight
/// to the API). Read when the part's stop begins: it depends on why the daemon stops (see
/// ``LifecycleStateMachine``).
package struct DrainDeadline: Sendable {
    private let read: @Sendable () -> ContinuousClock.Instant

    package init(_ read: @escaping @Sendable () -> ContinuousClock.Instant) {
        self.read = read
    }

    package var instant: ContinuousClock.Instant { read() }
}

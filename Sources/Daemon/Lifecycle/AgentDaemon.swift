import CAgentSupport
import Core
import Delivery
import Intake
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import Spool
import Synchronization
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon: the spool, then one service group of parts (``DaemonPartKind`` gives them and their order)
/// supervised by ``Supervisor``, with SIGTERM and SIGINT honoured in every phase.
///
/// - Start-up: the spool is opened and recovered, then the parts start one at a time, in order; READY=1
///   goes to systemd only once every configured listener accepts. A part that cannot start ends the
///   daemon with its error (naming the socket or address and the reason; exit codes in the README), after
///   the parts already started were stopped in reverse order, within a few seconds.
/// - SIGTERM or SIGINT, at any time: no further part starts; the parts stop in reverse order (STOPPING=1,
///   intake stops accepting and answers what it read, delivery gets until `[service] drain_timeout` after
///   the signal for a request in flight, the spool commits, checkpoints and closes); exit 0. A second
///   signal stops at once: nothing more is waited for, and nothing acknowledged is lost (an ack only ever
///   follows a commit).
/// - Backstops: a graceful stop that overruns the drain bound by 5 s turns into a stop at once; a stop at
///   once that takes over 5 s ends the process (swift-service-lifecycle's `maximumCancellationDuration`),
///   which systemd restarts and which, again, loses nothing acknowledged.
public struct AgentDaemon: Sendable {
    public let configuration: AgentConfiguration
    /// The file the configuration came from, read again on SIGHUP; `nil` for the embedded defaults.
    public let configurationPath: String?
    public let logger: Logger

    public init(configuration: AgentConfiguration, configurationPath: String?, logger: Logger) {
        self.configuration = configuration
        self.configurationPath = configurationPath
        self.logger = logger
    }

    /// Catches the operator signals until the daemon's own handling takes them over: call it first thing,
    /// so that a SIGTERM during start-up stops the daemon cleanly rather than killing it.
    public static func catchEarlySignals() {
        _ = cagent_catch_early_signals()
    }

    /// The API key, with a warning when it is missing or its file is readable by others.
    func loadKey() throws(ConfigurationError) -> APIKey? {
        let key = try APIKeySource.load(config: configuration.api)
        if let key {
            if let warning = APIKeySource.exposureWarning(path: key.source, agentGroups: APIKeySource.processGroups()) {
                logger.warning("\(warning)")
            }
            logger.info("API key loaded", metadata: ["source": "\(key.source)"])
        } else {
            logger.warning(
                "no API key: records are accepted and spooled, but not delivered until one is configured ([api] key_file, $DEFINITE_API_KEY or the api-key credential)"
            )
        }
        return key
    }

    public func run() async throws {
        FatalSignals.endOnExternalCrashSignals()
        let shutdownSignals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let supervisor = Supervisor(
            parts: DaemonPartKind.startOrder(configuration), drainTimeout: configuration.service.drainTimeout.duration, logger: logger)
        let group = ServiceGroupHandle()
        let partsEnded = CompletionSignal()
        let parts = Task {
            defer { partsEnded.signal() }
            try await runParts(supervisor: supervisor, group: group)
        }
        let signals = Task {
            func answer(_ name: String) async {
                switch supervisor.shutdownSignalled(name) {
                case .stopGracefully: await group.triggerGracefulShutdown()
                case .stopAtOnce: parts.cancel()
                case .none: break
                }
            }
            // What came before the signals were trapped counts as having come now.
            for (number, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] where cagent_take_early_signal(number) != 0 {
                await answer(name)
            }
            for await signal in shutdownSignals { await answer("\(signal)".uppercased()) }
        }
        // A stop asked for while a start-up step still blocks (a spool another process keeps locked, a long
        // recovery): the step cannot be interrupted, so after a moment for it to end it is left behind and the
        // process ends. Nothing was acknowledged yet, and whatever the step was writing is a transaction
        // SQLite rolls back, as after kill -9.
        if await Self.firstOf(partsEnded, group.stoppedBeforeItRan) === group.stoppedBeforeItRan,
            await !partsEnded.wait(until: .now + Self.startUpStepGrace)
        {
            signals.cancel()
            logger.notice("stopped during start-up, leaving the start-up step in progress (nothing was acknowledged yet)")
            return
        }
        let result = await parts.result
        signals.cancel()
        if let error = supervisor.exitError { throw error }
        if case .failure(let error) = result, !(error is CancellationError) { throw error }
        logger.info("stopped cleanly")
    }

    /// How long a stop asked for during start-up waits for the step in progress before leaving it.
    static let startUpStepGrace = Duration.seconds(1)

    /// The first of `a` and `b` to happen.
    private static func firstOf(_ a: CompletionSignal, _ b: CompletionSignal) async -> CompletionSignal {
        await withTaskGroup(of: CompletionSignal.self) { race in
            race.addTask {
                _ = await a.wait()
                return a
            }
            race.addTask {
                _ = await b.wait()
                return b
            }
            let first = await race.next() ?? a
            race.cancelAll()
            return first
        }
    }

    /// Opens the spool, makes the parts and runs them as one service group; returns when the group is done
    /// and the event loops and the blocking pool are shut down.
    private func runParts(supervisor: Supervisor, group handle: ServiceGroupHandle) async throws {
        let blocking = NIOThreadPool(numberOfThreads: 2)
        blocking.start()
        let eventLoops = IntakeEventLoops.make()
        do {
            let group = try await makeServiceGroup(supervisor: supervisor, eventLoops: eventLoops, blocking: blocking)
            await handle.install(group)
            try await group.run()
        } catch {
            await shutDown(eventLoops, blocking)
            throw error
        }
        await shutDown(eventLoops, blocking)
    }

    private func shutDown(_ eventLoops: MultiThreadedEventLoopGroup, _ blocking: NIOThreadPool) async {
        // Connections still open (stopping at once, or past the drain deadline) close with their loops.
        try? await eventLoops.shutdownGracefully()
        try? await blocking.shutdownGracefully()
    }

    private func makeServiceGroup(supervisor: Supervisor, eventLoops: MultiThreadedEventLoopGroup, blocking: NIOThreadPool) async throws
        -> ServiceGroup
    {
        let configuration = self.configuration
        let openFiles = ResourceLimits.raiseOpenFiles()
        let metricsRegistry = configuration.metrics.listen.map { _ in MetricsServer.bootstrap() }
        let settings = LiveConfiguration(configuration)
        let logger = self.logger
        // SQLite, files and the key: on the blocking pool, not the cooperative one.
        // One daemon per spool: locked before it is opened (or, a new one, as soon as it is made), so a second
        // daemon stops before it migrates the spool or resumes any batch of it.
        let (lock, writer) = try await blocking.runIfActive {
            let early = try SpoolLock.take(spoolPath: configuration.spool.path)
            let writer = try SpoolWriter(
                path: configuration.spool.path, durability: configuration.spool.durability,
                maxBytes: configuration.spool.maxBytes.bytes, diskReserve: configuration.spool.diskReserve?.bytes,
                access: try SpoolAccess(configuration: configuration.spool), logger: logger)
            return (try early ?? SpoolLock.take(spoolPath: configuration.spool.path), writer)
        }
        logger.info(
            "spool open",
            metadata: [
                "path": "\(configuration.spool.path)", "durability": "\(configuration.spool.durability.rawValue)",
                "held_bytes": "\(writer.capacity.usedBytes)", "open_files_limit": "\(openFiles)",
            ])
        let readiness = IntakeReadiness(capacity: writer.capacity)
        let confirmations = RemoteConfirmations()
        let key = APIKeyBox(try await blocking.runIfActive { try loadKey() })
        let delivery = try await blocking.runIfActive {
            try DeliveryService(settings: settings, writer: writer, key: key, confirmations: confirmations, logger: logger)
        }
        let passedSockets = takePassedSockets()
        let notifier = SystemdNotifier()

        func address(_ role: PassedSockets.Role, path: String) -> ListenerAddress {
            passedSockets[role].map(ListenerAddress.passed) ?? .path(path, mode: configuration.intake.socketMode)
        }
        let environment = ListenerEnvironment(
            passedSockets: passedSockets, eventLoops: eventLoops, blocking: blocking, stopAccepting: supervisor.stopAccepting,
            logger: logger)
        let unfinishedInput = UnfinishedInputBudget()
        func listener<Pipeline: ConnectionPipeline>(_ kind: DaemonPartKind, _ address: ListenerAddress, _ pipeline: Pipeline)
            -> any DaemonPart
        {
            StreamListener(part: kind, address: address, pipeline: pipeline, environment: environment)
        }
        let implementations = try supervisor.parts.map { (kind: DaemonPartKind) throws -> any DaemonPart in
            switch kind {
            case .writer:
                return SpoolWriterService(writer: writer, lock: lock)
            case .checkpointer:
                return SpoolCheckpointerService(writer: writer)
            case .delivery:
                return delivery
            case .lineSocket(let path):
                return listener(
                    kind, address(.intake, path: path),
                    IntakeServer(settings: settings, writer: writer, unfinishedInput: unfinishedInput, logger: logger))
            case .httpSocket(let path):
                return listener(
                    kind, address(.http, path: path),
                    HTTPIntakeServer(
                        settings: settings, writer: writer, readiness: readiness, confirmations: confirmations,
                        unfinishedInput: unfinishedInput, logger: logger))
            case .httpAddress(let listen):
                return listener(
                    kind, try ListenerAddress(listen: listen, mode: configuration.intake.socketMode),
                    HTTPIntakeServer(
                        settings: settings, writer: writer, readiness: readiness, confirmations: confirmations,
                        unfinishedInput: unfinishedInput, logger: logger))
            case .datagramSocket(let path):
                return DatagramIntakeServer(
                    part: kind, address: address(.datagram, path: path), settings: settings, writer: writer, environment: environment)
            case .metrics(let listen):
                guard let metricsRegistry else { preconditionFailure("metrics are bootstrapped whenever [metrics] listen is set") }
                return listener(
                    kind, try ListenerAddress(listen: listen, mode: configuration.intake.socketMode),
                    MetricsServer(
                        registry: metricsRegistry, spoolPath: configuration.spool.path, capacity: writer.capacity,
                        blocking: blocking, readiness: readiness, logger: logger))
            case .operatorSignals:
                return SignalService(
                    configurationPath: configurationPath, settings: settings, key: key, delivery: delivery.loop,
                    notifier: notifier, isReady: { supervisor.isReady && !supervisor.isStopping }, logger: logger)
            case .intakeState:
                return IntakeStateReporter(
                    capacity: writer.capacity, readiness: readiness, spoolPath: configuration.spool.path,
                    access: try SpoolAccess(configuration: configuration.spool), logger: logger)
            case .notifier:
                return NotifyService(
                    notifier: notifier, writer: writer, delivery: delivery.loop, configuration: configuration, blocking: blocking,
                    logger: logger)
            }
        }
        return supervisor.makeServiceGroup(implementations)
    }

    /// The sockets systemd passed; those no listener takes are logged and closed, so that no writer queues
    /// on a socket nobody serves.
    private func takePassedSockets() -> PassedSockets {
        let passed = PassedSockets.take()
        var unused = passed.unused
        if configuration.intake.httpSocket.isEmpty, let http = passed[.http] { unused.append(http) }
        if configuration.intake.datagramSocket == nil, let datagram = passed[.datagram] { unused.append(datagram) }
        for socket in unused {
            logger.warning(
                "a socket systemd passed is not used (name it intake, http or datagram, and configure that listener); closing it",
                metadata: ["socket": "\(socket)"])
            close(socket.fd)
        }
        return passed
    }
}

/// The service group, once it exists, for the signal handler: a graceful shutdown asked for before the
/// group is made (while the spool opens) is handed to it when it is installed.
private final class ServiceGroupHandle: Sendable {
    private struct State {
        var group: ServiceGroup?
        var shutdownRequested = false
    }

    private let state = Mutex(State())
    /// Happens when a stop is asked for before the group exists (start-up is still opening the spool).
    let stoppedBeforeItRan = CompletionSignal()

    func install(_ group: ServiceGroup) async {
        let requested = state.withLock { state in
            state.group = group
            return state.shutdownRequested
        }
        if requested { await group.triggerGracefulShutdown() }
    }

    func triggerGracefulShutdown() async {
        let group = state.withLock { state in
            state.shutdownRequested = true
            return state.group
        }
        guard let group else { return stoppedBeforeItRan.signal() }
        await group.triggerGracefulShutdown()
    }
}

import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The daemon: the spool writer, delivery, the intake server, operator signals and systemd
/// notifications, run as services with graceful shutdown on SIGTERM and SIGINT.
///
/// Start-up order is spool first (open, check, migrate), then delivery, then the socket: a writer can
/// never be acknowledged by a daemon whose spool is not open, and systemd hears READY=1 only once the
/// socket listens. Shutdown is the reverse: STOPPING=1, then intake stops and answers what it read, then
/// delivery gets `[service] drain_timeout` for a request in flight, then the spool closes cleanly.
public struct AgentDaemon {
    public let configuration: AgentConfiguration
    /// The file the configuration came from, read again on SIGHUP; `nil` for the embedded defaults.
    public let configurationPath: String?
    public let logger: Logger

    public init(configuration: AgentConfiguration, configurationPath: String?, logger: Logger) {
        self.configuration = configuration
        self.configurationPath = configurationPath
        self.logger = logger
    }

    /// The API key, with a warning when it is missing or its file is readable by others.
    func loadKey() throws(ConfigurationError) -> APIKey? {
        let key = try APIKeySource.load(config: configuration.api)
        if let key {
            if APIKeySource.isExposed(path: key.source) {
                logger.warning("the API key file is readable by group or others; chmod 600 it", metadata: ["path": "\(key.source)"])
            }
            logger.info("API key loaded", metadata: ["source": "\(key.source)"])
        } else {
            logger.warning("no API key: records are accepted and spooled, but not delivered until one is configured ([api] key_file, $DEFINITE_API_KEY or the api-key credential)")
        }
        return key
    }

    public func run() async throws {
        FatalSignals.endOnExternalCrashSignals()
        let openFiles = ResourceLimits.raiseOpenFiles()
        let metricsRegistry = configuration.metrics.listen.map { _ in MetricsServer.bootstrap() }
        let settings = LiveConfiguration(configuration)
        let writer = try SpoolWriter(
            path: configuration.spool.path, durability: configuration.spool.durability,
            maxBytes: configuration.spool.maxBytes.bytes, diskReserve: configuration.spool.diskReserve?.bytes,
            access: try SpoolAccess(configuration: configuration.spool), logger: logger)
        logger.info("spool open", metadata: [
            "path": "\(configuration.spool.path)", "durability": "\(configuration.spool.durability.rawValue)",
            "held_bytes": "\(writer.capacity.usedBytes)", "open_files_limit": "\(openFiles)",
        ])
        let readiness = IntakeReadiness(capacity: writer.capacity)
        let key = APIKeyBox(try loadKey())
        let delivery = try DeliveryService(settings: settings, writer: writer, key: key, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        IntakePriority.yieldToDelivery(group)
        let (ready, readyContinuation) = AsyncStream<Void>.makeStream()
        let intake = IntakeServer(settings: settings, writer: writer, group: group, logger: logger) {
            readiness.markListening()
            readyContinuation.yield()
            readyContinuation.finish()
        }
        let notifier = SystemdNotifier()
        let signals = SignalService(
            configurationPath: configurationPath, settings: settings, key: key, scheduler: delivery.scheduler,
            notifier: notifier, logger: logger)
        let notifications = NotifyService(
            notifier: notifier, ready: ready, writer: writer, scheduler: delivery.scheduler, configuration: configuration, logger: logger)
        var extra: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let path = configuration.intake.datagramSocket {
            extra.append(.init(service: DatagramIntakeServer(path: path, settings: settings, writer: writer, group: group, logger: logger)))
        }
        if let listen = configuration.metrics.listen, let metricsRegistry {
            extra.append(.init(service: MetricsServer(
                listen: listen, registry: metricsRegistry, spoolPath: configuration.spool.path, capacity: writer.capacity,
                readiness: readiness, group: group, logger: logger)))
        }
        // Started in this order and stopped in reverse: systemd hears STOPPING=1 first, then intake stops
        // (answering what it read), then delivery, then the spool closes.
        let services = ServiceGroup(configuration: .init(
            services: [
                .init(service: SpoolWriterService(writer: writer)),
                .init(service: delivery),
                .init(service: intake),
                .init(service: HTTPIntakeServer(settings: settings, writer: writer, readiness: readiness, group: group, logger: logger)),
                .init(service: signals),
                .init(service: notifications),
            ] + extra + [
                // Last, so it is the first to hear of a shutdown (readiness goes at once).
                .init(service: IntakeStateReporter(
                    capacity: writer.capacity, readiness: readiness, spoolPath: configuration.spool.path,
                    access: try SpoolAccess(configuration: configuration.spool), logger: logger)),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await services.run()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
        logger.info("stopped cleanly")
    }
}

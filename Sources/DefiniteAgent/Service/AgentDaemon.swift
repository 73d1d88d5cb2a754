import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The daemon: the spool writer and the intake server, run as services with graceful shutdown on
/// SIGTERM and SIGINT.
///
/// Start-up order is spool first (open, check, migrate), then the socket: a writer can never be
/// acknowledged by a daemon whose spool is not open. Shutdown is the reverse: intake stops and answers
/// what it read, then the writer commits the last batches and closes the spool cleanly.
public struct AgentDaemon {
    public let configuration: AgentConfiguration
    public let logger: Logger

    public init(configuration: AgentConfiguration, logger: Logger) {
        self.configuration = configuration
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
        MemoryTuning.apply()
        let writer = try SpoolWriter(
            path: configuration.spool.path, durability: configuration.spool.durability,
            maxBytes: configuration.spool.maxBytes.bytes, logger: logger)
        logger.info("spool open", metadata: [
            "path": "\(configuration.spool.path)", "durability": "\(configuration.spool.durability.rawValue)",
            "held_bytes": "\(writer.capacity.usedBytes)",
        ])
        let key = APIKeyBox(try loadKey())
        let delivery = try DeliveryService(configuration: configuration, writer: writer, key: key, logger: logger,
                                           drainTimeout: configuration.service.drainTimeout.duration)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let (ready, readyContinuation) = AsyncStream<Void>.makeStream()
        let intake = IntakeServer(configuration: configuration, writer: writer, group: group, logger: logger) {
            readyContinuation.yield()
            readyContinuation.finish()
        }
        let notifier = SystemdNotifier()
        // Started in this order and stopped in reverse: systemd hears STOPPING=1 first, then intake stops
        // (answering what it read), then delivery, then the spool closes.
        let services = ServiceGroup(configuration: .init(
            services: [
                .init(service: SpoolWriterService(writer: writer)),
                .init(service: delivery),
                .init(service: intake),
                .init(service: SignalService(configuration: configuration, key: key, scheduler: delivery.scheduler,
                                             notifier: notifier, logger: logger)),
                .init(service: NotifyService(notifier: notifier, ready: ready, writer: writer, scheduler: delivery.scheduler,
                                             configuration: configuration, logger: logger)),
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

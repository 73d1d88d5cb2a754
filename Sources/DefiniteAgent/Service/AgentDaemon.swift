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

    public func run() async throws {
        let writer = try SpoolWriter(
            path: configuration.spool.path, durability: configuration.spool.durability,
            maxBytes: configuration.spool.maxBytes.bytes, logger: logger)
        logger.info("spool open", metadata: [
            "path": "\(configuration.spool.path)", "durability": "\(configuration.spool.durability.rawValue)",
            "held_bytes": "\(writer.capacity.usedBytes)",
        ])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let intake = IntakeServer(configuration: configuration, writer: writer, group: group, logger: logger)
        let services = ServiceGroup(configuration: .init(
            services: [
                .init(service: SpoolWriterService(writer: writer)),
                .init(service: intake),
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

import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The local Stream API: `POST /v2/stream` on `[intake] http_socket` (and `http_listen` when set), so a
/// program that already calls the Stream API gains the agent's durability by changing its base URL.
///
/// On graceful shutdown it stops accepting and lets every connection answer the request it is on.
final class HTTPIntakeServer: Service, Sendable {
    private let settings: LiveConfiguration
    private let writer: SpoolWriter
    private let readiness: IntakeReadiness?
    private let group: any EventLoopGroup
    private let logger: Logger

    init(settings: LiveConfiguration, writer: SpoolWriter, readiness: IntakeReadiness? = nil, group: any EventLoopGroup, logger: Logger) {
        self.settings = settings
        self.writer = writer
        self.readiness = readiness
        self.group = group
        self.logger = logger
    }

    func run() async throws {
        let configuration = settings.current
        let (settings, writer, readiness, logger) = (self.settings, self.writer, self.readiness, self.logger)
        // One quiescing helper per listening channel: a helper serves exactly one server channel.
        func bootstrap(_ quiesce: ServerQuiescingHelper) -> ServerBootstrap {
            ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelInitializer { channel in
                    let configuration = settings.current
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(HTTPIntakeHandler(configuration: configuration, writer: writer, readiness: readiness, logger: logger))
                    }
                }
        }
        var listeners: [(channel: any Channel, quiesce: ServerQuiescingHelper)] = []
        let path = configuration.intake.httpSocket
        if !path.isEmpty {
            try SocketPath.prepare(path)
            let quiesce = ServerQuiescingHelper(group: group)
            let channel = try await bootstrap(quiesce).bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
            chmod(path, mode_t(configuration.intake.socketMode))
            listeners.append((channel, quiesce))
            logger.info("local Stream API listening", metadata: ["socket": "\(path)"])
        }
        if let listen = configuration.intake.httpListen, let (host, port) = HostPort.parse(listen) {
            let quiesce = ServerQuiescingHelper(group: group)
            let channel = try await bootstrap(quiesce).bind(host: host, port: port).get()
            listeners.append((channel, quiesce))
            logger.info("local Stream API listening", metadata: ["address": "\(channel.localAddress?.plainDescription ?? listen)"])
        }
        guard !listeners.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        let bound = listeners
        try await withGracefulShutdownHandler {
            for listener in bound { try await listener.channel.closeFuture.get() }
        } onGracefulShutdown: {
            for listener in bound { listener.quiesce.initiateShutdown(promise: nil) }
        }
        for listener in bound {
            let drained = group.next().makePromise(of: Void.self)
            listener.quiesce.initiateShutdown(promise: drained)
            try await drained.futureResult.get()
        }
        if !path.isEmpty { unlink(path) }
    }
}

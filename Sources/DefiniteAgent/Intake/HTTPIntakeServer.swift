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
    private let group: any EventLoopGroup
    private let logger: Logger

    init(settings: LiveConfiguration, writer: SpoolWriter, group: any EventLoopGroup, logger: Logger) {
        self.settings = settings
        self.writer = writer
        self.group = group
        self.logger = logger
    }

    func run() async throws {
        let configuration = settings.current
        let quiesce = ServerQuiescingHelper(group: group)
        let (settings, writer, logger) = (self.settings, self.writer, self.logger)
        let bootstrap = ServerBootstrap(group: group)
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
                    try channel.pipeline.syncOperations.addHandler(HTTPIntakeHandler(configuration: configuration, writer: writer, logger: logger))
                }
            }
        var channels: [any Channel] = []
        let path = configuration.intake.httpSocket
        if !path.isEmpty {
            try SocketPath.prepare(path)
            let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
            chmod(path, mode_t(configuration.intake.socketMode))
            channels.append(channel)
            logger.info("local Stream API listening", metadata: ["socket": "\(path)"])
        }
        if let listen = configuration.intake.httpListen, let (host, port) = HostPort.parse(listen) {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            channels.append(channel)
            logger.info("local Stream API listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? listen)"])
        }
        guard !channels.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        try await withGracefulShutdownHandler {
            for channel in channels { try await channel.closeFuture.get() }
        } onGracefulShutdown: {
            quiesce.initiateShutdown(promise: nil)
        }
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        try await drained.futureResult.get()
        if !path.isEmpty { unlink(path) }
    }
}

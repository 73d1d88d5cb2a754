import Core
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Spool

/// The local Stream API's connections: `POST /v2/stream` on `[intake] http_socket` and on `http_listen`
/// (each its own listener), so a program that already calls the Stream API gains the agent's durability
/// by changing its base URL.
///
/// Stopped gracefully, each connection finishes the request it is on (NIO's HTTP pipeline handles the
/// quiescing) and closes.
package struct HTTPIntakeServer: ConnectionPipeline {
    let settings: LiveConfiguration
    let writer: SpoolWriter
    /// Answers `GET /readyz` (nil: always ready).
    var readiness: IntakeReadiness?
    /// Where requests with `config.wait = true` wait for the API's commit (nil: they are answered at once).
    var confirmations: RemoteConfirmations?
    /// Shared by every connection of every listener (see ``UnfinishedInputBudget``).
    let unfinishedInput: UnfinishedInputBudget
    let logger: Logger

    package var backlog: Int32 { 256 }

    /// Connections each listener of the local Stream API keeps open at most (see ``HTTPConnectionBounds``).
    package static let maxConnections = 1024
    /// How long a connection may go without a byte read or written, unless a request is in progress.
    package static let idleTimeout = TimeAmount.seconds(120)

    package func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
        let (settings, writer, readiness, confirmations, unfinishedInput, logger) = (
            settings, writer, readiness, confirmations, unfinishedInput, logger
        )
        let bounds = HTTPConnectionBounds(maxConnections: Self.maxConnections, listener: "the local Stream API", logger: logger)
        return bootstrap.childChannelInitializer { channel in
            let configuration = settings.current
            return channel.eventLoop.makeCompletedFuture {
                // A request with `config.wait = true` is quiet until its answer, for up to `wait_timeout`.
                guard try bounds.admit(channel) else { return }
                try channel.pipeline.syncOperations.configureLocalHTTPServer()
                try channel.pipeline.syncOperations.addHandler(StopNotice(), position: .first)
                try channel.pipeline.syncOperations.addHandler(
                    HTTPIntakeHandler(
                        configuration: configuration, settings: settings, writer: writer, readiness: readiness,
                        confirmations: confirmations,
                        unfinishedInput: unfinishedInput, logger: logger))
                // The handler keeps a connection whose request is being stored or waits for the API's commit.
                try bounds.bound(channel, idleTimeout: Self.idleTimeout)
            }
        }
    }

    package init(
        settings: LiveConfiguration, writer: SpoolWriter, readiness: IntakeReadiness? = nil, confirmations: RemoteConfirmations? = nil,
        unfinishedInput: UnfinishedInputBudget = UnfinishedInputBudget(), logger: Logger
    ) {
        self.unfinishedInput = unfinishedInput
        self.settings = settings
        self.writer = writer
        self.readiness = readiness
        self.confirmations = confirmations
        self.logger = logger
    }
}

/// Tells the connection's ``HTTPIntakeHandler`` that the daemon stops (``DaemonStopping``), ahead of NIO's
/// HTTP pipeline handler, which keeps `ChannelShouldQuiesceEvent` to itself: a request waiting for the API's
/// commit (`config.wait = true`) is then answered at once, and the connection closes after it.
final class StopNotice: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent { context.fireUserInboundEventTriggered(DaemonStopping()) }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The daemon began to stop (see ``StopNotice``).
struct DaemonStopping: Sendable {}

extension ChannelPipeline.SynchronousOperations {
    /// NIO's HTTP/1.1 server pipeline with its protocol error handler (a request it cannot parse is
    /// answered 400 and closed), behind ``ParserErrorsOfClosedConnections``: a request head cut off when
    /// the connection closed (a slow client at a stop, a keep-alive client's next request) is not answered,
    /// since nobody is there. NIO's error handler answered it, through a pipeline handler that had already
    /// finished quiescing, and the debug build stopped with "Wrote in quiescing completed state" at every
    /// stop that found such a client.
    package func configureLocalHTTPServer() throws {
        try configureHTTPServerPipeline(withErrorHandling: false)
        try addHandler(ParserErrorsOfClosedConnections())
        try addHandler(HTTPServerProtocolErrorHandler())
    }
}

/// Drops an HTTP parser error on a connection that is no longer active: the bytes it could not parse were
/// left when the connection closed, and there is no one to answer. See
/// ``NIOCore/ChannelPipeline/SynchronousOperations/configureLocalHTTPServer()``.
package final class ParserErrorsOfClosedConnections: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = NIOAny

    package init() {}

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError, !context.channel.isActive { return }
        context.fireErrorCaught(error)
    }
}

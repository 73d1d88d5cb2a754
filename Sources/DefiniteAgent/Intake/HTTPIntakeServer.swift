import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The local Stream API's connections: `POST /v2/stream` on `[intake] http_socket` and on `http_listen`
/// (each its own listener), so a program that already calls the Stream API gains the agent's durability
/// by changing its base URL.
///
/// Stopped gracefully, each connection finishes the request it is on (NIO's HTTP pipeline handles the
/// quiescing) and closes.
struct HTTPIntakeServer: ConnectionPipeline {
    let settings: LiveConfiguration
    let writer: SpoolWriter
    /// Answers `GET /readyz` (nil: always ready).
    var readiness: IntakeReadiness?
    let logger: Logger

    var backlog: Int32 { 256 }

    func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
        let (settings, writer, readiness, logger) = (settings, writer, readiness, logger)
        return bootstrap.childChannelInitializer { channel in
            let configuration = settings.current
            return channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try channel.pipeline.syncOperations.addHandler(HTTPIntakeHandler(configuration: configuration, writer: writer, readiness: readiness, logger: logger))
            }
        }
    }
}

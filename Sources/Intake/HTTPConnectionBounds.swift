import Core
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What one HTTP listener's connections may hold, so that clients that never read their answers, never
/// send, or never leave cannot take the daemon's memory or descriptors (and with them every other listener
/// and delivery) from the rest.
///
/// - A connection whose answers are not read is not read either (NIO's `BackPressureHandler`): its answers
///   wait in at most a socket buffer and a write buffer's worth of memory. Unread answers once piled up
///   without bound (1.8 GB in 15 s from two pipelining clients).
/// - A connection with nothing read or written for its idle time is closed.
/// - At most ``maxConnections`` are open at once; one more is closed as soon as it is accepted, and the
///   refusals are logged at most once a minute.
package struct HTTPConnectionBounds: Sendable {
    package let maxConnections: Int
    private let open: ConnectionCount

    /// `listener` names the listener in the log line of refused connections.
    package init(maxConnections: Int, listener: String, logger: Logger?) {
        self.maxConnections = maxConnections
        open = ConnectionCount(listener: listener, logger: logger)
    }

    /// Admits `channel`, counted until it closes; over ``maxConnections``, adds a handler that closes it as
    /// soon as it is active and returns false (add nothing else then).
    package func admit(_ channel: any Channel) throws -> Bool {
        guard open.admit(channel, limit: maxConnections) else {
            try channel.pipeline.syncOperations.addHandler(CloseOnActive())
            return false
        }
        return true
    }

    /// Adds the bounds' handlers to an admitted connection's pipeline, once its own handlers are in: the
    /// back-pressure and the idle timer next to the socket, where they see every read and write, and the
    /// closing at the end, so that a handler before it may keep a connection with a request in progress
    /// (a `wait = true` request waiting for the API's commit) by not passing the idle event on.
    package func bound(_ channel: any Channel, idleTimeout: TimeAmount) throws {
        let backPressure = BackPressureHandler()
        try channel.pipeline.syncOperations.addHandler(backPressure, position: .first)
        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout), position: .after(backPressure))
        try channel.pipeline.syncOperations.addHandler(CloseWhenIdle(), position: .last)
    }
}

/// Open connections of one listener, counted across event loops.
private final class ConnectionCount: Sendable {
    private let open = NIOLockedValueBox(0)
    private let refusalLog = LogRateLimiter(interval: .seconds(60))
    private let listener: String
    private let logger: Logger?

    init(listener: String, logger: Logger?) {
        self.listener = listener
        self.logger = logger
    }

    func admit(_ channel: any Channel, limit: Int) -> Bool {
        let admitted = open.withLockedValue { open in
            guard open < limit else { return false }
            open += 1
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { [open] _ in open.withLockedValue { $0 -= 1 } }
        } else if let heldBack = refusalLog.admit() {
            logger?.warning(
                "\(listener) holds its most connections (\(limit)); closed \(heldBack + 1) new ones since the last such line. Clients that keep connections open without requests? Each closes after its idle time",
                metadata: ["listener": "\(listener)"])
        }
        return admitted
    }
}

/// Closes a connection over its listener's limit as soon as it is active.
private final class CloseOnActive: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }
}

/// Closes a connection when ``NIOCore/IdleStateHandler`` says nothing was read or written for its time.
private final class CloseWhenIdle: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

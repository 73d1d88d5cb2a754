import Core
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A stream ``ListeningSocket`` served by NIO until the daemon stops.
///
/// When the daemon's stop begins (for every listener at once, or at its own part's turn, whichever comes
/// first), it stops accepting and tells every connection to finish (NIO's quiescing: each gets
/// `ChannelShouldQuiesceEvent`, answers what it read and closes), waits for them up to the drain deadline,
/// then for its part's turn to stop. Cancelled (stopping at once), it stops accepting and waits for
/// nothing; connections still open are closed with the event loops. Either way the path the daemon bound
/// is removed.
///
/// One quiescing helper per listening socket: NIO's `ServerQuiescingHelper` follows a single server
/// channel (sharing one between two sockets left the second accepting forever, and SIGTERM hung).
///
/// Connections still open when the listener's stop ends (past the drain deadline, or stopping at once)
/// are closed here, and waited for, before the event loops shut down: closed by the loops' shutdown
/// instead, each told the quiescing helper on the server channel's loop, which may have shut down first
/// ("Cannot schedule tasks on an EventLoop that has already shut down", a crash in SwiftNIO's strict mode).
struct ServedListener: Sendable {
    private let channel: any Channel
    private let quiesce: ServerQuiescingHelper
    private let connections: OpenConnections
    private let socket: ListeningSocket

    /// Hands `socket` to NIO with `bootstrap`'s child channel settings (the bootstrap must not set a server
    /// channel initializer: this type adds its own). On failure the socket is discarded.
    init(
        _ socket: ListeningSocket, backlog: Int32, bootstrap: ServerBootstrap, group: any EventLoopGroup, logger: Logger
    ) async throws(StartupError) {
        let quiesce = ServerQuiescingHelper(group: group)
        let connections = OpenConnections()
        let channel: any Channel
        do {
            channel =
                try await bootstrap
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            DescriptorReserve(listeningSocket: socket.fd, part: socket.part, logger: logger))
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                        try channel.pipeline.syncOperations.addHandler(OpenConnections.Handler(connections))
                    }
                }
                .withBoundSocket(socket.fd)
                .get()
        } catch {
            socket.discard()
            throw StartupError(socket.origin.failure, part: socket.part, "the event loop cannot take the socket: \(error)", cause: error)
        }
        // NIO listens again with its default backlog (128) when it adopts a socket: put the listener's back,
        // or, on a socket systemd passed, systemd's default (Backlog=SOMAXCONN).
        _ = listen(socket.fd, socket.origin == .passed ? SOMAXCONN : backlog)
        self.channel = channel
        self.quiesce = quiesce
        self.connections = connections
        self.socket = socket
    }

    /// Serves until the daemon's stop begins (`stopAccepting`, or this part's own stop), then stops as the
    /// type describes. Returns early, without a stop, only if the socket closed by itself.
    func serve(drainDeadline: DrainDeadline, stopAccepting: CompletionSignal, logger: Logger) async {
        let closed = CompletionSignal()
        channel.closeFuture.whenComplete { _ in closed.signal() }
        let drained = CompletionSignal()
        let quiesced = channel.eventLoop.makePromise(of: Void.self)
        quiesced.futureResult.whenComplete { _ in drained.signal() }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { race in
                race.addTask { _ = await closed.wait() }
                race.addTask { _ = await stopAccepting.wait() }
                await race.next()
                race.cancelAll()
            }
        } onGracefulShutdown: {
            stopAccepting.signal()
        }
        if stopAccepting.hasHappened, !closed.hasHappened, !Task.isCancelled {
            quiesce.initiateShutdown(promise: quiesced)
            let drainedInTime = await drained.wait(until: drainDeadline.instant)
            if !drainedInTime, !Task.isCancelled {
                logger.warning(
                    "connections still open at the drain deadline are closed unanswered (nothing unanswered was acknowledged)",
                    metadata: ["listener": "\(socket.part)"])
            }
            // The part ends at its turn of the stop, as the service group orders them.
            try? await gracefulShutdown()
        }
        // Stopping at once, past the drain deadline (or the socket closed by itself): no new connections,
        // and whatever is still open is closed now, while every event loop runs.
        try? await channel.close()
        await connections.closeAll(within: .seconds(1))
        socket.removeOwnedPath()
    }
}

/// The connections a listener accepted and that are still open, to close them at the end of its stop.
final class OpenConnections: Sendable {
    private let open = Mutex<[ObjectIdentifier: any Channel]>([:])

    /// In the server channel's pipeline: sees each accepted connection (after the quiescing helper's).
    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = any Channel
        private let connections: OpenConnections

        init(_ connections: OpenConnections) { self.connections = connections }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let child = unwrapInboundIn(data)
            let id = ObjectIdentifier(child)
            connections.open.withLock { $0[id] = child }
            // On the connection's own loop: no hop to another loop, which may be shutting down.
            child.closeFuture.whenComplete { [connections] _ in _ = connections.open.withLock { $0.removeValue(forKey: id) } }
            context.fireChannelRead(data)
        }
    }

    /// Closes every connection still open and waits, up to `bound`, until each has closed: also when
    /// stopping at once (a cancelled task), since the event loops shut down next.
    func closeAll(within bound: Duration) async {
        let channels = open.withLock { Array($0.values) }
        guard let first = channels.first else { return }
        for channel in channels { channel.close(promise: nil) }
        let closed = CompletionSignal()
        EventLoopFuture.andAllComplete(channels.map(\.closeFuture), on: first.eventLoop).whenComplete { _ in closed.signal() }
        let deadline = ContinuousClock.now + bound
        _ = await Task.detached { await closed.wait(until: deadline) }.value
    }
}

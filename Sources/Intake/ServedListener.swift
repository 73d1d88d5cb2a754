import Core
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

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
struct ServedListener: Sendable {
    private let channel: any Channel
    private let quiesce: ServerQuiescingHelper
    private let socket: ListeningSocket

    /// Hands `socket` to NIO with `bootstrap`'s child channel settings (the bootstrap must not set a server
    /// channel initializer: this type adds its own). On failure the socket is discarded.
    init(
        _ socket: ListeningSocket, backlog: Int32, bootstrap: ServerBootstrap, group: any EventLoopGroup, logger: Logger
    ) async throws(StartupError) {
        let quiesce = ServerQuiescingHelper(group: group)
        let channel: any Channel
        do {
            channel =
                try await bootstrap
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            DescriptorReserve(listeningSocket: socket.fd, part: socket.part, logger: logger))
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
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
        // Stopping at once (or the socket closed by itself): no new connections, whatever is open goes
        // with the event loops.
        try? await channel.close()
        socket.removeOwnedPath()
    }
}

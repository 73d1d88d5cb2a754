import Core
import Logging
import Metrics
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// The layout of Linux's `struct ucred` (`SO_PEERCRED`), which Glibc's module map hides behind _GNU_SOURCE.
struct PeerCredentials: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Admits only the peers `[intake] allow_uids` / `allow_gids` name, using the kernel's `SO_PEERCRED`
/// (the credentials of the process that connected, which it cannot forge).
///
/// A refused peer gets one error line, the connection is closed before anything it sent is read, and
/// the refusal is logged with its uid, gid and pid. An admitted peer's pipeline loses this handler.
final class PeerCredentialsHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let allowUIDs: Set<UInt32>
    private let allowGIDs: Set<UInt32>
    private let logger: Logger

    init(allowUIDs: [UInt32], allowGIDs: [UInt32], logger: Logger) {
        self.allowUIDs = Set(allowUIDs)
        self.allowGIDs = Set(allowGIDs)
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        guard let provider = context.channel as? any SocketOptionProvider else {
            refuse(context: context, because: "the agent cannot read this connection's credentials")
            return
        }
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(17))  // SO_PEERCRED on Linux
        // On the channel's own event loop this completes at once, before any read is processed.
        credentials.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let peer) where allowUIDs.contains(peer.uid) || allowGIDs.contains(peer.gid):
                context.pipeline.syncOperations.removeHandler(self, promise: nil)
                context.fireChannelActive()
            case .success(let peer):
                logger.warning(
                    "refused a writer that is not allowed by [intake] allow_uids/allow_gids",
                    metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                refuse(
                    context: context,
                    because: "uid \(peer.uid) (gid \(peer.gid)) is not allowed to write to this agent ([intake] allow_uids / allow_gids)")
            case .failure(let error):
                refuse(context: context, because: "the agent cannot read this connection's credentials (\(error))")
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Nothing from a peer that is not (yet) admitted goes further.
    }

    private func refuse(context: ChannelHandlerContext, because reason: String) {
        var buffer = context.channel.allocator.buffer(capacity: 160)
        IntakeReply.write(connectionRefusal: IntakeRejection(.peerNotAllowed, reason), to: &buffer)
        AgentMetrics.rejected(.peerNotAllowed).increment()
        context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

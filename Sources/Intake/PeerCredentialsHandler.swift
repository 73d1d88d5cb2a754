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

/// `[intake] allow_uids` / `allow_gids`: who may write over the Unix sockets. `nil` when neither is set
/// (anyone who can open the socket may write).
struct PeerAllowList: Sendable {
    let uids: Set<UInt32>
    let gids: Set<UInt32>

    init?(_ intake: AgentConfiguration.Intake) {
        guard !intake.allowUIDs.isEmpty || !intake.allowGIDs.isEmpty else { return nil }
        uids = Set(intake.allowUIDs)
        gids = Set(intake.allowGIDs)
    }

    func admits(uid: UInt32, gid: UInt32) -> Bool { uids.contains(uid) || gids.contains(gid) }

    /// Why `peer` is refused, for its answer.
    static func refusal(uid: UInt32, gid: UInt32) -> String {
        "uid \(uid) (gid \(gid)) is not allowed to write to this agent ([intake] allow_uids / allow_gids)"
    }
}

/// Admits only the peers `[intake] allow_uids` / `allow_gids` name, using the kernel's `SO_PEERCRED`
/// (the credentials of the process that connected, which it cannot forge).
///
/// A refused peer gets one error line, the connection is closed before anything it sent is read, and
/// the refusal is logged with its uid, gid and pid. It stays in an admitted peer's pipeline: after a
/// reload (SIGHUP) it checks the peer against the lists then in force at its next read, and a peer no
/// longer allowed is let go as at a stop: the lines it sent before are answered, nothing more is read,
/// and the connection closes.
final class PeerCredentialsHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let settings: LiveConfiguration
    private let logger: Logger
    /// `nil` until known, or on a channel without credentials (only a concern once a list is set).
    private var peer: PeerCredentials?
    /// The configuration generation the peer was last checked against.
    private var checked: Int
    private var admitted = false
    private var letGo = false

    init(settings: LiveConfiguration, logger: Logger) {
        self.settings = settings
        self.logger = logger
        checked = settings.generation
    }

    func channelActive(context: ChannelHandlerContext) {
        checked = settings.generation
        let allowed = PeerAllowList(settings.current.intake)
        guard let provider = context.channel as? any SocketOptionProvider else {
            // An in-memory channel (tests): nobody to ask, which matters only when a list is set.
            if allowed == nil { admit(context: context) } else { refuse(context: context, because: Self.unknownPeer) }
            return
        }
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(17))  // SO_PEERCRED on Linux
        // On the channel's own event loop this completes at once, before any read is processed.
        credentials.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let peer):
                self.peer = peer
                if allowed?.admits(uid: peer.uid, gid: peer.gid) ?? true {
                    admit(context: context)
                } else {
                    logger.warning(
                        "refused a writer that is not allowed by [intake] allow_uids/allow_gids",
                        metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                    refuse(context: context, because: PeerAllowList.refusal(uid: peer.uid, gid: peer.gid))
                }
            case .failure(let error):
                if allowed == nil {
                    admit(context: context)
                } else {
                    refuse(context: context, because: "\(Self.unknownPeer) (\(error))")
                }
            }
        }
    }

    private static let unknownPeer = "the agent cannot read this connection's credentials"

    private func admit(context: ChannelHandlerContext) {
        admitted = true
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Nothing from a peer that is not (or no longer) admitted goes further.
        guard admitted, !letGo else { return }
        let generation = settings.generation
        if generation != checked {
            checked = generation
            if let allowed = PeerAllowList(settings.current.intake), !(peer.map { allowed.admits(uid: $0.uid, gid: $0.gid) } ?? false) {
                letGo = true
                logger.warning(
                    "closing the connection of a writer the reloaded [intake] allow_uids/allow_gids no longer allow; the lines it sent before were answered",
                    metadata: ["uid": "\(peer.map { "\($0.uid)" } ?? "unknown")", "pid": "\(peer.map { "\($0.pid)" } ?? "unknown")"])
                AgentMetrics.rejected(.peerNotAllowed).increment()
                // As at a stop: what was read is answered, nothing more is read, the connection closes.
                context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
                return
            }
        }
        context.fireChannelRead(data)
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

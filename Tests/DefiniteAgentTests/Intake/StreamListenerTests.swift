import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycleTestKit
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// A stream listener's stop, in-process (ServiceLifecycleTestKit's graceful shutdown, no service group).
@Suite("Stream listener")
struct StreamListenerTests {
    /// Connections that answer each byte with "ok\n" and, told to quiesce, close, unless `stubborn`.
    struct ReplyPipeline: ConnectionPipeline {
        var stubborn = false
        var backlog: Int32 { 8 }

        func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
            let stubborn = stubborn
            return bootstrap.childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Reply(stubborn: stubborn)) }
            }
        }

        final class Reply: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            typealias OutboundOut = ByteBuffer
            let stubborn: Bool
            init(stubborn: Bool) { self.stubborn = stubborn }

            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: "ok\n")), promise: nil)
            }

            func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
                if event is ChannelShouldQuiesceEvent, !stubborn { context.close(promise: nil) }
            }
        }
    }

    let path = NSTemporaryDirectory() + "listener-\(UUID().uuidString.prefix(8)).sock"
    let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let blocking = NIOThreadPool(numberOfThreads: 1)

    init() {
        blocking.start()
    }

    func listener(_ pipeline: ReplyPipeline) -> StreamListener<ReplyPipeline> {
        StreamListener(
            part: .lineSocket(path), address: .path(path, mode: 0o600), pipeline: pipeline,
            environment: ListenerEnvironment(
                passedSockets: PassedSockets([]), eventLoops: eventLoops, blocking: blocking,
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })))
    }

    /// A connected client that has had one answer (so the listener holds the connection).
    func connectedClient() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try #require(SocketPath.withAddress(of: path) { connect(fd, $0, $1) } == 0)
        var reply = [UInt8](repeating: 0, count: 3)
        _ = write(fd, "x", 1)
        try #require(read(fd, &reply, 3) == 3)
        return fd
    }

    func shutDown() async throws {
        try await eventLoops.shutdownGracefully()
        try await blocking.shutdownGracefully()
    }

    @Test func aGracefulStopLetsConnectionsCloseThenClosesTheSocketAndRemovesItsPath() async throws {
        let listener = listener(ReplyPipeline())
        try await testGracefulShutdown { trigger in
            let running = try await listener.start()
            let client = try connectedClient()
            defer { close(client) }
            trigger.triggerGracefulShutdown()
            try await running.run(drainDeadline: DrainDeadline { .now + .seconds(30) })
            var byte: UInt8 = 0
            #expect(read(client, &byte, 1) == 0, "the connection was closed on quiescing")
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        try await shutDown()
    }

    @Test func aConnectionThatDoesNotFinishIsGivenUpAtTheDrainDeadline() async throws {
        let listener = listener(ReplyPipeline(stubborn: true))
        try await testGracefulShutdown { trigger in
            let running = try await listener.start()
            let client = try connectedClient()
            defer { close(client) }
            trigger.triggerGracefulShutdown()
            let started = ContinuousClock.now
            try await running.run(drainDeadline: DrainDeadline { started + .milliseconds(200) })
            let took = ContinuousClock.now - started
            #expect(took >= .milliseconds(200) && took < .seconds(10), "waited \(took)")
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        try await shutDown()
    }

    @Test func cancellationStopsAtOnceWithoutWaitingForConnections() async throws {
        let listener = listener(ReplyPipeline(stubborn: true))
        let running = try await listener.start()
        let client = try connectedClient()
        defer { close(client) }
        let task = Task { try await running.run(drainDeadline: DrainDeadline { .now + .seconds(60) }) }
        task.cancel()
        let started = ContinuousClock.now
        try await task.value
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(!FileManager.default.fileExists(atPath: path))
        try await shutDown()
    }

    @Test func aPathInUseFailsTheStartNamingThePart() async throws {
        let other = try ListeningSocket.unix(
            path: path, kind: .stream, mode: 0o600, backlog: 8, part: "x", passedSockets: PassedSockets([]))
        defer { other.discard() }
        let error = await #expect(throws: StartupError.self) { try await listener(ReplyPipeline()).start() }
        #expect(
            error?.description
                == "cannot start the intake socket \(path): another process is listening on it (is definite-agent already running?)")
        try await shutDown()
    }
}

import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import Intake

/// ``HTTPConnectionBounds`` on embedded channels: the connection cap, the idle close and back-pressure on
/// unread answers (the real daemon's side is in `Tests/Integration/test_http_intake.py`).
@Suite("HTTP connection bounds")
struct HTTPConnectionBoundsTests {
    @Test func connectionsOverTheLimitCloseAtOnceAndAClosedOneFreesItsPlace() throws {
        let bounds = HTTPConnectionBounds(maxConnections: 2, listener: "test", logger: nil)
        let loop = EmbeddedEventLoop()
        let channels = (0..<3).map { _ in EmbeddedChannel(loop: loop) }
        let admitted = try channels.map { try bounds.admit($0) }
        #expect(admitted == [true, true, false])
        for channel in channels { try channel.connect(to: .init(unixDomainSocketPath: "/x")).wait() }
        #expect(channels.map(\.isActive) == [true, true, false], "the third is closed when it becomes active")
        try channels[0].close().wait()
        loop.run()
        let next = EmbeddedChannel(loop: loop)
        #expect(try bounds.admit(next))
        _ = try? next.finish()
        _ = try? channels[1].finish()
    }

    /// On a real event loop and socket (NIO's idle timer reads the real clock). A handler between the
    /// timer and the closing (the local Stream API's, while a request is stored or waits for the API's
    /// commit) keeps the connection by not passing the event on.
    @Test(arguments: [false, true])
    func aConnectionIdleForItsTimeClosesUnlessAHandlerKeepsIt(busy: Bool) async throws {
        let directory = NSTemporaryDirectory() + "bounds-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/idle.sock"
        let bounds = HTTPConnectionBounds(maxConnections: 8, listener: "test", logger: nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard try bounds.admit(channel) else { return }
                    try channel.pipeline.syncOperations.addHandler(KeepWhileBusy(busy: busy))
                    try bounds.bound(channel, idleTimeout: .milliseconds(300))
                }
            }
            .bind(unixDomainSocketPath: path).get()
        defer { server.close(promise: nil) }
        let opened = ContinuousClock.now  // before the server's idle timer can start
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(unixDomainSocketPath: path).get()
        // The client gives up after a while: the test ends either way.
        let giveUp = client.eventLoop.scheduleTask(in: .seconds(busy ? 1 : 5)) { client.close(promise: nil) }
        try await client.closeFuture.get()
        giveUp.cancel()
        let lasted = ContinuousClock.now - opened
        if busy {
            #expect(lasted >= .seconds(1), "kept while busy: \(lasted)")
        } else {
            #expect(lasted >= .milliseconds(300) && lasted < .milliseconds(4900), "closed by the server after its idle time: \(lasted)")
        }
    }

    @Test func aConnectionIsNotReadWhileItsAnswersCannotBeWritten() throws {
        let bounds = HTTPConnectionBounds(maxConnections: 8, listener: "test", logger: nil)
        let channel = EmbeddedChannel()
        let reads = ReadCounter()
        try bounds.bound(channel, idleTimeout: .seconds(60))
        try channel.pipeline.syncOperations.addHandler(reads, position: .first)
        try channel.connect(to: .init(unixDomainSocketPath: "/x")).wait()
        channel.read()
        #expect(reads.count == 1)
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.read()
        #expect(reads.count == 1, "held while the answers wait")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(reads.count == 2, "the held read goes once they can be written")
        _ = try? channel.finish()
    }
}

/// Counts the reads that reach the channel (it sits next to the head).
private final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var count = 0

    func read(context: ChannelHandlerContext) {
        count += 1
        context.read()
    }
}

/// Keeps its connection from closing when idle while `busy`, as the local Stream API's handler does while a
/// request is in progress.
private final class KeepWhileBusy: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    let busy: Bool

    init(busy: Bool) { self.busy = busy }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if busy, event is IdleStateHandler.IdleStateEvent { return }
        context.fireUserInboundEventTriggered(event)
    }
}

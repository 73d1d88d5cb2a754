import Foundation
import Glibc
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// `[intake] allow_uids` / `allow_gids`: the credentials come from the kernel (`SO_PEERCRED`), so the
/// decision is tested on a real Unix socket served by the pipeline ``IntakeServer`` installs, with this
/// process as the peer; what happens without readable credentials, on an in-memory channel.
@Suite("Peer credentials handler")
struct PeerCredentialsHandlerTests {
    static let refusalPrefix = #"{"ok":false,"status":403,"code":"peer_not_allowed","error":"#

    /// Serves the line protocol as the daemon does (``IntakeServer``) on a socket in a temporary directory.
    struct Served {
        let path: String
        let group: MultiThreadedEventLoopGroup
        let channel: any Channel
        let settings: LiveConfiguration

        init(allowUIDs: [UInt32], allowGIDs: [UInt32], writer: SpoolWriter) async throws {
            var config = AgentConfiguration()
            config.intake.defaultTable = "bronze.events"
            config.intake.allowUIDs = allowUIDs
            config.intake.allowGIDs = allowGIDs
            path = try makeTemporaryDirectory("peer") + "/agent.sock"
            group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            settings = LiveConfiguration(config)
            let server = IntakeServer(settings: settings, writer: writer, logger: quietLogger)
            channel = try await server.configure(ServerBootstrap(group: group)).bind(unixDomainSocketPath: path).get()
        }

        func stop() async throws {
            try await channel.close()
            try await group.shutdownGracefully()
        }
    }

    /// Connects, sends one line at once (without waiting for an answer) and reads until the first reply
    /// line, then until the server closes. The send may find the connection already refused and closed.
    func exchange(_ served: Served, _ line: String) throws -> (reply: String, closedAfter: Bool) {
        let client = try UnixClient(path: served.path)
        _ = client.trySend(line + "\n")
        let first = client.receive { $0.contains(UInt8(ascii: "\n")) }
        let newline = try #require(first.bytes.firstIndex(of: UInt8(ascii: "\n")), "no reply: \(first.bytes.text)")
        let rest = client.receive()  // until the server closes, or the timeout
        return (first.bytes[..<newline].text, first.bytes.count == newline + 1 && rest.bytes.isEmpty && rest.closed)
    }

    @Test func aPeerWhoseUIDIsAllowedIsServed() async throws {
        let spool = try TestSpool("peer")
        defer { spool.shutDown() }
        let served = try await Served(allowUIDs: [geteuid() &+ 1, geteuid()], allowGIDs: [], writer: spool.writer)

        let client = try UnixClient(path: served.path)
        try client.send(#"{"ack":"me","a":1}"# + "\n")
        let reply = client.receive { $0.contains(UInt8(ascii: "\n")) }
        #expect(reply.bytes.text == #"{"ack":"me","ok":true,"accepted":1}"# + "\n")
        #expect(try spool.pending() == ["bronze.events": 1])
        try await served.stop()
    }

    @Test func aPeerWhoseGIDIsAllowedIsServed() async throws {
        let spool = try TestSpool("peer")
        defer { spool.shutDown() }
        let served = try await Served(allowUIDs: [geteuid() &+ 1], allowGIDs: [getegid()], writer: spool.writer)

        let client = try UnixClient(path: served.path)
        try client.send(#"{"ack":"group","a":1}"# + "\n")
        let reply = client.receive { $0.contains(UInt8(ascii: "\n")) }
        #expect(reply.bytes.text == #"{"ack":"group","ok":true,"accepted":1}"# + "\n")
        try await served.stop()
    }

    @Test func aPeerNotAllowedGetsOne403LineNothingItSentIsReadAndTheConnectionCloses() async throws {
        let spool = try TestSpool("peer")
        defer { spool.shutDown() }
        let served = try await Served(allowUIDs: [geteuid() &+ 1], allowGIDs: [getegid() &+ 1], writer: spool.writer)

        let (reply, closed) = try exchange(served, #"{"ack":"intruder","a":1}"#)
        #expect(
            reply == Self.refusalPrefix
                + "\"uid \(geteuid()) (gid \(getegid())) is not allowed to write to this agent ([intake] allow_uids / allow_gids)\"}")
        #expect(closed, "the connection stayed open or said more after the refusal")
        // What the peer sent was never parsed: nothing is stored.
        #expect(try spool.pending().isEmpty)
        try await served.stop()
    }

    @Test func withoutReadableCredentialsThePeerIsRefused() async throws {
        // An in-memory channel offers no socket options: the handler cannot tell who connected.
        let spool = try TestSpool("peer")
        defer { spool.shutDown() }
        let writer = spool.writer
        let channel = try await NIOAsyncTestingChannel.connected { pipeline in
            var config = AgentConfiguration()
            config.intake.allowUIDs = [geteuid()]
            try pipeline.addHandler(PeerCredentialsHandler(settings: LiveConfiguration(config), logger: quietLogger))
            try pipeline.addHandler(
                IntakeConnectionHandler(
                    configuration: AgentConfiguration(), writer: writer, budget: IntakeMemoryBudget(), logger: quietLogger))
        }
        var replies = OutboundCollector(channel, as: ByteBuffer.self) { Array($0.readableBytesView) }
        #expect(try await replies.lines(1) == [Self.refusalPrefix + #""the agent cannot read this connection's credentials"}"#])
        #expect(try await replies.waitUntilClosed())
        _ = try await channel.finish(acceptAlreadyClosed: true)
    }

    /// A reload that no longer allows a connected writer: its connection went on writing (the check was
    /// made once, at connect). Now the lines it sent before are answered, the next ones are not read, and
    /// the connection closes.
    @Test func aWriterAReloadNoLongerAllowsIsLetGoAfterItsAnswers() async throws {
        let spool = try TestSpool("peer")
        defer { spool.shutDown() }
        let served = try await Served(allowUIDs: [], allowGIDs: [], writer: spool.writer)

        let client = try UnixClient(path: served.path)
        try client.send(#"{"ack":"before","a":1}"# + "\n")
        let reply = client.receive { $0.contains(UInt8(ascii: "\n")) }
        #expect(reply.bytes.text == #"{"ack":"before","ok":true,"accepted":1}"# + "\n")

        var reloaded = served.settings.current
        reloaded.intake.allowUIDs = [geteuid() &+ 1]
        _ = served.settings.reload(reloaded)
        _ = client.trySend(#"{"ack":"after","a":2}"# + "\n")
        let rest = client.receive()
        #expect(rest.bytes.isEmpty && rest.closed, "the connection stayed open, or answered a line sent after the reload")
        #expect(try spool.pending() == ["bronze.events": 1])
        try await served.stop()
    }
}

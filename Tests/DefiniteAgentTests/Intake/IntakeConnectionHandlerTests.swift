import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The line protocol's connection handler in-process: an in-memory channel in front of a real spool writer.
/// Replies come once the writer committed (from its thread), so each test waits for them, with a deadline.
@Suite("Intake connection handler")
struct IntakeConnectionHandlerTests {
    static func configuration(maxLineBytes: Int = 1 << 20) -> AgentConfiguration {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        config.intake.maxLineBytes = ByteSize(bytes: maxLineBytes)
        return config
    }

    /// A connection served by an ``IntakeConnectionHandler`` writing to `spool`, and its replies.
    func connection(
        _ spool: TestSpool, configuration: AgentConfiguration = configuration(),
        unfinishedInput: UnfinishedInputBudget = UnfinishedInputBudget()
    ) async throws -> OutboundCollector<ByteBuffer> {
        let writer = spool.writer
        let channel = try await NIOAsyncTestingChannel.connected { pipeline in
            try pipeline.addHandler(
                IntakeConnectionHandler(
                    configuration: configuration, writer: writer, budget: IntakeMemoryBudget(), unfinishedInput: unfinishedInput,
                    logger: quietLogger))
        }
        return OutboundCollector(channel, as: ByteBuffer.self) { Array($0.readableBytesView) }
    }

    func send(_ text: String, to replies: OutboundCollector<ByteBuffer>) async throws {
        try await replies.channel.writeInbound(ByteBuffer(string: text))
    }

    func finish(_ replies: OutboundCollector<ByteBuffer>) async throws {
        _ = try await replies.channel.finish(acceptAlreadyClosed: true)
    }

    /// A reply line as JSON.
    func object(_ line: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
    }

    @Test func aValidLineIsAcknowledgedWithItsAckIdOnceDurable() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"c1-7","a":1,"b":"x"}"# + "\n", to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"c1-7","ok":true,"accepted":1}"#])
        // Acknowledged means durable: the row is in the spool (without its ack) when the reply is out.
        #expect(try spool.pending() == ["bronze.events": 1])
        #expect(try spool.records(of: "bronze.events") == [#"{"a":1,"b":"x"}"#])
        try await finish(replies)
    }

    @Test func aRequestOfSeveralRowsIsAcknowledgedWithItsRowCount() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"r","config":{"table":"bronze.users"},"data":[{"id":1},{"id":2},{"id":3}]}"# + "\n", to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"r","ok":true,"accepted":3}"#])
        #expect(try spool.pending() == ["bronze.users": 3])
        try await finish(replies)
    }

    @Test func aValidLineThatIsRefusedKeepsItsAckId() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"t-1","config":{"table":"bronze.bad-name"},"data":{"a":1}}"# + "\n", to: replies)
        let reply = try object(try #require(try await replies.lines(1).first))
        #expect(reply["ack"] as? String == "t-1")
        #expect(reply["ok"] as? Bool == false)
        #expect(reply["status"] as? Int == 400)
        #expect(reply["code"] as? String == "invalid_table")
        #expect((reply["error"] as? String)?.contains("\"bad-name\"") == true)
        #expect(reply["line"] == nil)
        #expect(try spool.pending().isEmpty)
        try await finish(replies)
    }

    @Test func aMergeRowWithoutItsKeyIsRefusedWithItsAckId() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(
            #"{"ack":"m","config":{"table":"bronze.u","mode":"merge","primary_key":["id"]},"data":[{"name":"x"}]}"# + "\n", to: replies)
        let reply = try object(try #require(try await replies.lines(1).first))
        #expect(reply["ack"] as? String == "m")
        #expect(reply["status"] as? Int == 400)
        #expect(reply["code"] as? String == "missing_primary_key")
        try await finish(replies)
    }

    @Test func malformedJSONGetsInvalidJSONWithTheByteOffsetAndTheAckIfOneWasRead() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send("{\"ack\":\"j1\",\"a\":}\n{\"a\":1\n", to: replies)
        let lines = try await replies.lines(2)
        let withAck = try object(lines[0])
        #expect(withAck["ack"] as? String == "j1")
        #expect(withAck["status"] as? Int == 400)
        #expect(withAck["code"] as? String == "invalid_json")
        #expect((withAck["error"] as? String)?.hasPrefix("invalid JSON at byte 16") == true, "\(lines[0])")
        // Without an ack the reply names the line instead.
        let withoutAck = try object(lines[1])
        #expect(withoutAck["ack"] == nil)
        #expect(withoutAck["line"] as? Int == 2)
        #expect(withoutAck["status"] as? Int == 400)
        #expect(withoutAck["code"] as? String == "invalid_json")
        #expect((withoutAck["error"] as? String)?.hasPrefix("invalid JSON at byte 6") == true, "\(lines[1])")
        #expect(try spool.pending().isEmpty)
        try await finish(replies)
    }

    @Test func aLineThatIsNotAnObjectIsAnInvalidRowAndAnEmptyLineInvalidJSON() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send("[1,2]\n\n", to: replies)
        #expect(
            try await replies.lines(2) == [
                #"{"ok":false,"line":1,"status":400,"code":"invalid_row","error":"each line must be a JSON object"}"#,
                #"{"ok":false,"line":2,"status":400,"code":"invalid_json","error":"empty line: expected a JSON object"}"#,
            ])
        try await finish(replies)
    }

    @Test func aLineSplitAcrossTwoReadsIsOneRequest() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"s1","a":"#, to: replies)
        // Nothing is answered (or stored) for a line whose newline has not arrived: no work is pending.
        try await replies.drain()
        #expect(replies.bytes.isEmpty)
        try await send("12,\"b\":[1,\n", to: replies)
        let reply = try await replies.lines(1)
        #expect(reply.count == 1 && reply[0].hasPrefix(#"{"ack":"s1","ok":false,"status":400,"code":"invalid_json""#), "\(reply)")

        // The same, valid this time, cut in three (the carried part grows), with a CR before the newline.
        try await send(#"{"ack":"s2","#, to: replies)
        try await send(#""a":12,"b""#, to: replies)
        try await send(":[1,2]}\r\n", to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"s2","ok":true,"accepted":1}"#])
        #expect(try spool.records(of: "bronze.events") == [#"{"a":12,"b":[1,2]}"#])
        try await finish(replies)
    }

    /// The carried start of a line is not searched again for its newline at every piece (quadratic in the
    /// line's length); what arrives after it is, wherever the pieces fall: one byte at a time, the CR and
    /// the newline apart, the next line's start in the same piece as a newline.
    @Test func aLineArrivingOneByteAtATimeIsOneRequest() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)
        let text = #"{"ack":"b1","pad":"\#(String(repeating: "x", count: 300))"}"# + "\r\n" + #"{"ack":"b2","n":2}"# + "\n"
        for byte in text.utf8 { try await send(String(decoding: [byte], as: UTF8.self), to: replies) }
        #expect(try await replies.lines(2) == [#"{"ack":"b1","ok":true,"accepted":1}"#, #"{"ack":"b2","ok":true,"accepted":1}"#])
        #expect(try spool.records(of: "bronze.events").count == 2)
        try await finish(replies)
    }

    /// A read holding more lines than one burst takes: the rest wait in the buffer and go in the next
    /// bursts, before anything more is read, every line answered in order, whatever the cut.
    @Test func linesBeyondABurstWaitForTheNextAndAllAreAnsweredInOrder() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)
        let lines = IntakeConnectionHandler.maxLinesPerBurst * 2 + 10
        // Empty lines (refused with their line number), an acked record at each burst's edge, one at the end.
        func acked(_ line: Int) -> Bool { line % IntakeConnectionHandler.maxLinesPerBurst == 0 || line == lines }
        var text = ""
        for line in 1...lines { text += acked(line) ? #"{"ack":"a\#(line)","n":\#(line)}"# + "\n" : "\n" }
        try await send(text + #"{"ack":"last","n":0}"# + "\n", to: replies)
        let answered = try await replies.lines(lines + 1)
        #expect(answered.count == lines + 1)
        for (index, reply) in answered.enumerated() {
            let line = index + 1
            if acked(line) {
                #expect(reply == #"{"ack":"a\#(line)","ok":true,"accepted":1}"#)
            } else if line <= lines {
                #expect(reply.hasPrefix(#"{"ok":false,"line":\#(line),"status":400,"code":"invalid_json""#), "\(reply)")
            } else {
                #expect(reply == #"{"ack":"last","ok":true,"accepted":1}"#)
            }
        }
        #expect(try spool.records(of: "bronze.events").count == 4)
        try await finish(replies)
    }

    @Test func severalLinesInOneReadAreAnsweredInOrderAndLinesWithoutAckOnlyWhenRefused() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        let lines = [
            #"{"ack":"1","a":1}"#,
            #"{"a":2}"#,  // accepted without ack: no reply
            #"{"ack":"3","config":{"table":"nope"},"data":{"a":3}}"#,  // refused at once, between two that wait for the commit
            #"{"ack":"4","a":4}"#,
            #"{"a":5,"b":}"#,  // refused without ack: named by its line number
            #"{"ack":"6","a":6}"#,
        ]
        try await send(lines.joined(separator: "\n") + "\n", to: replies)
        let answered = try await replies.lines(5)
        #expect(answered[0] == #"{"ack":"1","ok":true,"accepted":1}"#)
        #expect(
            answered[1].hasPrefix(#"{"ack":"3","ok":false,"status":400,"code":"invalid_table","error":"table \"nope\" must be"#),
            "\(answered[1])")
        #expect(answered[2] == #"{"ack":"4","ok":true,"accepted":1}"#)
        #expect(
            answered[3].hasPrefix(#"{"ok":false,"line":5,"status":400,"code":"invalid_json","error":"invalid JSON at byte 11"#),
            "\(answered[3])")
        #expect(answered[4] == #"{"ack":"6","ok":true,"accepted":1}"#)
        #expect(try spool.records(of: "bronze.events") == [#"{"a":1}"#, #"{"a":2}"#, #"{"a":4}"#, #"{"a":6}"#])
        try await replies.drain()
        #expect(replies.bytes.isEmpty, "unexpected reply: \(replies.bytes.text)")

        // Line numbers go on counting on the connection across reads.
        try await send("[]\n", to: replies)
        #expect(
            try await replies.lines(1) == [
                #"{"ok":false,"line":7,"status":400,"code":"invalid_row","error":"each line must be a JSON object"}"#
            ])
        try await finish(replies)
    }

    /// Lines asking for no ack are awaited by nobody: after a bulk commit their burst may wait a moment to
    /// share a commit (``GroupCommit``). A burst with an ack never waits.
    @Test func onlyABurstWithoutAcksMayWaitToShareACommit() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)
        let bulk = GroupCommit.bulkRecords
        func lines(_ range: Range<Int>, ack: Bool) -> String {
            range.map { ack ? #"{"ack":"\#($0)","n":\#($0)}"# : #"{"n":\#($0)}"# }.joined(separator: "\n") + "\n"
        }
        func pending() throws -> Int { try spool.pending()["bronze.events"] ?? 0 }

        try await send(lines(0..<bulk, ack: true), to: replies)
        _ = try await replies.lines(bulk)
        #expect(spool.writer.groupCommitWaits == 0)
        try await send(lines(bulk..<2 * bulk, ack: false), to: replies)
        let deadline = ContinuousClock.now + .seconds(10)
        while try pending() < 2 * bulk, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(try pending() == 2 * bulk)
        #expect(spool.writer.groupCommitWaits == 1, "the burst without acks after a bulk commit waited")
        try await send(lines(2 * bulk..<2 * bulk + 1, ack: true), to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"\#(2 * bulk)","ok":true,"accepted":1}"#])
        #expect(spool.writer.groupCommitWaits == 1, "a burst with an ack does not wait")
        try await finish(replies)
    }

    @Test func anAckIdIsEchoedAsSentEscapesIncluded() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"a":1,"ack":"id-\u00e9\"7"}"# + "\n", to: replies)
        let line = try #require(try await replies.lines(1).first)
        #expect(line == #"{"ack":"id-\u00e9\"7","ok":true,"accepted":1}"#)
        #expect(try object(line)["ack"] as? String == "id-é\"7")
        try await finish(replies)
    }

    @Test func aLineOverMaxLineBytesIsRefusedAfterTheLinesBeforeItAndTheConnectionCloses() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool, configuration: Self.configuration(maxLineBytes: 64))

        let long = #"{"ack":"long","pad":""# + String(repeating: "p", count: 100) + #""}"#
        try await send(#"{"ack":"first","a":1}"# + "\n" + long + "\n" + #"{"ack":"after","a":2}"# + "\n", to: replies)
        let answered = try await replies.lines(2)
        #expect(answered[0] == #"{"ack":"first","ok":true,"accepted":1}"#)
        // The long line's ack is not read: it is answered by its line number.
        #expect(
            answered[1]
                == #"{"ok":false,"line":2,"status":413,"code":"line_too_long","error":"line 2 is longer than [intake] max_line_bytes (64); closing the connection"}"#
        )
        #expect(try await replies.waitUntilClosed())
        // Nothing after the long line was taken.
        #expect(try spool.records(of: "bronze.events") == [#"{"a":1}"#])
        try await replies.drain()
        #expect(replies.bytes.isEmpty)
        try await finish(replies)
    }

    @Test func aLineOfExactlyMaxLineBytesIsTakenAndOneByteMoreIsNot() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool, configuration: Self.configuration(maxLineBytes: 64))

        let prefix = #"{"ack":"edge","pad":""#
        let exact = prefix + String(repeating: "p", count: 64 - prefix.utf8.count - 2) + #""}"#
        #expect(exact.utf8.count == 64)
        // The limit is on the line without its line ending (\r\n here).
        try await send(exact + "\r\n", to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"edge","ok":true,"accepted":1}"#])

        let over = prefix + String(repeating: "p", count: 65 - prefix.utf8.count - 2) + #""}"#
        try await send(over + "\n", to: replies)
        #expect(
            try await replies.lines(1) == [
                #"{"ok":false,"line":2,"status":413,"code":"line_too_long","error":"line 2 is longer than [intake] max_line_bytes (64); closing the connection"}"#
            ])
        #expect(try await replies.waitUntilClosed())
        try await finish(replies)
    }

    @Test func anUnfinishedLineOverMaxLineBytesIsRefusedBeforeItsNewlineArrives() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool, configuration: Self.configuration(maxLineBytes: 64))

        try await send(#"{"ack":"x","pad":""# + String(repeating: "p", count: 40), to: replies)
        try await replies.drain()
        #expect(replies.bytes.isEmpty)
        try await send(String(repeating: "p", count: 40), to: replies)
        #expect(
            try await replies.lines(1) == [
                #"{"ok":false,"line":1,"status":413,"code":"line_too_long","error":"line 1 is longer than [intake] max_line_bytes (64); closing the connection"}"#
            ])
        #expect(try await replies.waitUntilClosed())
        try await finish(replies)
    }

    /// Unfinished lines of every connection count together: each connection was bounded by
    /// `max_line_bytes`, their number by nothing. The line that would pass the shared limit is refused
    /// `busy` (the others are not disturbed), and a finished or refused line gives its bytes back.
    @Test func unfinishedLinesOfAllConnectionsShareOneLimitAndTheLineThatPassesItIsRefused() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        let shared = UnfinishedInputBudget(fixedLimit: 100)
        var first = try await connection(spool, unfinishedInput: shared)
        var second = try await connection(spool, unfinishedInput: shared)

        try await send(#"{"ack":"a","pad":""# + String(repeating: "p", count: 60), to: first)
        #expect(shared.heldBytes == 78)
        try await send(#"{"ack":"ok","a":1}"# + "\n" + #"{"ack":"b","pad":""# + String(repeating: "q", count: 10), to: second)
        let refused = try await second.lines(2)
        #expect(refused[0] == #"{"ack":"ok","ok":true,"accepted":1}"#, "lines before it are answered")
        #expect(
            refused[1]
                == #"{"ok":false,"line":2,"status":503,"code":"busy","error":"line 2 is unfinished while the agent already holds 100 of unfinished lines and request bodies from all connections, as much as it keeps; nothing of it was stored; closing the connection, retry"}"#
        )
        #expect(try await second.waitUntilClosed())
        #expect(shared.heldBytes == 78, "the refused line gave its bytes back")

        try await send(String(repeating: "p", count: 10) + #""}"# + "\n", to: first)
        #expect(try await first.lines(1) == [#"{"ack":"a","ok":true,"accepted":1}"#], "the first connection was not disturbed")
        #expect(shared.heldBytes == 0)
        try await send(#"{"ack":"c","pad":"#, to: first)
        #expect(shared.heldBytes == 17)
        try await finish(first)
        try await finish(second)
        #expect(shared.heldBytes == 0, "a connection that ends gives back its unfinished line")
        #expect(try spool.records(of: "bronze.events").count == 2)
    }

    @Test func whenTheClientEndsInsideALineThatLineIsRefusedAndTheConnectionCloses() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"ok","a":1}"# + "\n" + #"{"ack":"cut","a":2"#, to: replies)
        #expect(try await replies.lines(1) == [#"{"ack":"ok","ok":true,"accepted":1}"#])
        try await replies.channel.fireUserEvent(ChannelEvent.inputClosed)
        #expect(
            try await replies.lines(1) == [
                #"{"ok":false,"line":2,"status":400,"code":"invalid_json","error":"the connection ended inside line 2: every request must end with a newline"}"#
            ])
        #expect(try await replies.waitUntilClosed())
        #expect(try spool.pending() == ["bronze.events": 1])
        try await finish(replies)
    }

    @Test func toldToQuiesceItAnswersWhatItReadAndClosesWithoutRefusingACutLine() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"last","a":1}"# + "\n" + #"{"ack":"cut","#, to: replies)
        try await replies.channel.fireUserEvent(ChannelShouldQuiesceEvent())
        #expect(try await replies.lines(1) == [#"{"ack":"last","ok":true,"accepted":1}"#])
        #expect(try await replies.waitUntilClosed())
        try await replies.drain()
        #expect(replies.bytes.isEmpty, "the cut line got a reply: \(replies.bytes.text)")
        try await finish(replies)
    }

    @Test func aFullSpoolRefusesWith507KeepingTheAckAndStoresNothing() async throws {
        let spool = try TestSpool("intake-handler", maxBytes: 16)
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        try await send(#"{"ack":"small","a":1}"# + "\n" + #"{"ack":"big","pad":"0123456789abcdef"}"# + "\n", to: replies)
        let answered = try await replies.lines(2)
        #expect(answered[0] == #"{"ack":"small","ok":true,"accepted":1}"#)
        let full = try object(answered[1])
        #expect(full["ack"] as? String == "big")
        #expect(full["status"] as? Int == 507)
        #expect(full["code"] as? String == "spool_full")
        #expect((full["error"] as? String)?.hasPrefix("the spool is full ([spool] max_bytes = 16)") == true, "\(answered[1])")
        #expect(try spool.records(of: "bronze.events") == [#"{"a":1}"#])
        try await finish(replies)
    }

    @Test func aWriterThatStoppedFailsTheWholeBurstWith503() async throws {
        let spool = try TestSpool("intake-handler")
        spool.shutDown()
        var replies = try await connection(spool)

        try await send(#"{"ack":"a","x":1}"# + "\n" + #"{"x":2}"# + "\n", to: replies)
        // Accepted lines fail with the commit: each gets the writer's error, with its ack or its line number.
        #expect(
            try await replies.lines(2) == [
                #"{"ack":"a","ok":false,"status":503,"code":"shutting_down","error":"the agent is shutting down; retry shortly"}"#,
                #"{"ok":false,"line":2,"status":503,"code":"shutting_down","error":"the agent is shutting down; retry shortly"}"#,
            ])
        try await finish(replies)
    }

    @Test func burstsAreAnsweredInTheOrderTheyWereRead() async throws {
        let spool = try TestSpool("intake-handler")
        defer { spool.shutDown() }
        var replies = try await connection(spool)

        // Each read is its own burst and commit; a refusal in a later burst waits for the earlier commit.
        for i in 0..<6 {
            let line = i % 3 == 2 ? #"{"ack":"\#(i)","config":{"table":"x"},"data":{}}"# : #"{"ack":"\#(i)","i":\#(i)}"#
            try await send(line + "\n", to: replies)
        }
        let answered = try await replies.lines(6)
        let acks = try answered.map { try object($0)["ack"] as? String }
        #expect(acks == ["0", "1", "2", "3", "4", "5"])
        #expect(try answered.map { try object($0)["ok"] as? Bool } == [true, true, false, true, true, false])
        #expect(try spool.pending() == ["bronze.events": 4])
        try await finish(replies)
    }
}

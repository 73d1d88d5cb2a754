import Testing

@testable import DefiniteAgent

@Suite("send's ledger")
struct SendLedgerTests {
    static func request(_ line: Int) -> SendLedger.Request {
        SendLedger.Request(line: line, bytes: Array("{\"ack\":\"\(line)\",\"data\":{}}\n".utf8))
    }

    /// Hands lines `lines` to the ledger as fresh input, as far as it takes them; returns the lines written.
    static func write(_ ledger: inout SendLedger, fresh lines: inout [Int]) -> [Int] {
        var written: [Int] = []
        while let request = ledger.next(fresh: { lines.isEmpty ? nil : request(lines.removeFirst()) }) {
            written.append(request.line)
        }
        return written
    }

    static func accepted(_ line: Int) -> SendLedger.Reply { .accepted(ack: "\(line)", records: 1) }
    static func full(_ line: Int) -> SendLedger.Reply {
        .refused(ack: "\(line)", status: 507, code: "spool_full", message: "the spool is full")
    }

    @Test func linesGoInOrderWithinTheWindow() {
        var ledger = SendLedger(waitsForRoom: true, maxInFlight: 3)
        var input = Array(1...5)
        #expect(Self.write(&ledger, fresh: &input) == [1, 2, 3])
        #expect(ledger.receive(Self.accepted(1)) == .accepted(line: 1, records: 1))
        #expect(Self.write(&ledger, fresh: &input) == [4])
        for line in 2...4 { _ = ledger.receive(Self.accepted(line)) }
        #expect(Self.write(&ledger, fresh: &input) == [5])
        _ = ledger.receive(Self.accepted(5))
        #expect(ledger.isSettled && ledger.totals.acceptedRecords == 5 && ledger.totals.rejectedLines == 0)
    }

    /// Issue 17: a line over max_line_bytes closes the connection; the lines behind it were never read and
    /// go again on the next connection, in order, so every line is accounted for.
    @Test func aLineTooLongClosesTheConnectionAndTheLinesBehindItGoAgain() {
        var ledger = SendLedger(waitsForRoom: true)
        var input = Array(1...100)
        #expect(Self.write(&ledger, fresh: &input).count == 100)
        for line in 1...50 { _ = ledger.receive(Self.accepted(line)) }
        let event = ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: "line 51 is longer than …"))
        #expect(event == .rejected(line: 51, status: 413, code: "line_too_long", message: "line 51 is longer than …"))
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 49))
        var none: [Int] = []
        #expect(Self.write(&ledger, fresh: &none) == Array(52...100))
        for line in 52...100 { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.isSettled)
        #expect(ledger.totals.acceptedRecords == 99 && ledger.totals.rejectedLines == 1)
    }

    @Test func anUnexpectedEndSendsTheUnansweredLinesAgainAndSaysSo() {
        var ledger = SendLedger(waitsForRoom: true)
        var input = Array(1...10)
        _ = Self.write(&ledger, fresh: &input)
        for line in 1...4 { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.connectionLost() == .unexpected(unanswered: 6))
        #expect(ledger.unconfirmed == 6)
        var none: [Int] = []
        #expect(Self.write(&ledger, fresh: &none) == Array(5...10))
    }

    /// Issue 17: while the spool is full, refused lines wait (nothing new goes), then go again in order,
    /// with a growing wait an accepted line resets; without waiting they count as rejected, for one summary.
    @Test func linesRefusedForRoomWaitThenGoAgainInOrder() {
        var ledger = SendLedger(waitsForRoom: true)
        var input = Array(1...6)
        _ = Self.write(&ledger, fresh: &input)
        _ = ledger.receive(Self.accepted(1))
        #expect(ledger.receive(Self.full(2)) == .waitingForRoom(line: 2))
        #expect(!ledger.mayWrite && !ledger.mayRetryRoomAfterWaiting)
        _ = ledger.receive(Self.accepted(3))
        for line in 4...6 { _ = ledger.receive(Self.full(line)) }
        #expect(ledger.mayRetryRoomAfterWaiting && ledger.roomWait == SendLedger.firstRoomWait)
        ledger.retryWaitingLines()
        #expect(ledger.roomWait == SendLedger.firstRoomWait * 2)
        var more = [7]
        #expect(Self.write(&ledger, fresh: &more) == [2, 4, 5, 6, 7])
        for line in [2, 4] { _ = ledger.receive(Self.full(line)) }
        for line in [5, 6, 7] { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.roomWait == SendLedger.firstRoomWait)
        ledger.retryWaitingLines()
        #expect(Self.write(&ledger, fresh: &more) == [2, 4])
        for line in [2, 4] { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.isSettled)
        #expect(ledger.totals.acceptedRecords == 7 && ledger.totals.waitedForRoom == 4 && ledger.totals.roomRetries == 2)
    }

    @Test func theWaitForRoomGrowsToItsBound() {
        var ledger = SendLedger(waitsForRoom: true)
        var input = [1]
        for _ in 0..<20 {
            _ = Self.write(&ledger, fresh: &input)
            _ = ledger.receive(Self.full(1))
            ledger.retryWaitingLines()
        }
        #expect(ledger.roomWait == SendLedger.longestRoomWait)
    }

    @Test func withoutWaitingLinesRefusedForRoomAreRejectedForOneSummary() {
        var ledger = SendLedger(waitsForRoom: false)
        var input = Array(1...4)
        _ = Self.write(&ledger, fresh: &input)
        _ = ledger.receive(Self.accepted(1))
        for line in 2...4 {
            #expect(ledger.receive(Self.full(line)) == .rejected(line: line, status: 507, code: "spool_full", message: "the spool is full"))
        }
        #expect(ledger.isSettled && ledger.totals.refusedForRoom == [2, 3, 4] && ledger.totals.rejectedLines == 3)
    }

    @Test func aReplyForAnotherLineIsOutOfStep() {
        var ledger = SendLedger(waitsForRoom: true)
        var input = [1, 2]
        _ = Self.write(&ledger, fresh: &input)
        guard case .outOfStep = ledger.receive(Self.accepted(2)) else {
            Issue.record("a reply for line 2 was taken as line 1's")
            return
        }
    }

    @Test func theWindowBoundsTheBytesHeldForResending() {
        var ledger = SendLedger(waitsForRoom: true, maxInFlight: 1000, maxInFlightBytes: 100)
        var input = Array(1...50)
        let written = Self.write(&ledger, fresh: &input)
        #expect(written.count < 10 && written.count > 1)
    }

    @Test func repliesAreReadAsTheProtocolWritesThem() {
        func reply(_ text: String) -> SendLedger.Reply? { SendSession.reply(ArraySlice(text.utf8)) }
        #expect(reply(#"{"ack":"7","ok":true,"accepted":1}"#) == .accepted(ack: "7", records: 1))
        #expect(reply(#"{"ack":"8","ok":false,"status":422,"code":"invalid_config","error":"no"}"#)
            == .refused(ack: "8", status: 422, code: "invalid_config", message: "no"))
        #expect(reply(#"{"ok":false,"line":3,"status":413,"code":"line_too_long","error":"long"}"#)
            == .refused(ack: nil, status: 413, code: "line_too_long", message: "long"))
        #expect(reply("garbage") == nil)
        #expect(reply(#"{"ack":"7","ok":true}"#) == nil)
    }
}

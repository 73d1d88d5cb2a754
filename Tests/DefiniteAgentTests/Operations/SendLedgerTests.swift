import Glibc
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("send's ledger")
struct SendLedgerTests {
    static let format = SendRequestFormat(config: #"{"table":"bronze.t"}"#)

    /// A request of the given lines, each record `{"i":<line>}`.
    static func request(_ lines: [Int]) -> SendLedger.Request {
        var builder = SendRequestFormat.Builder(format: format, firstLine: lines[0], capacity: 64)
        for line in lines {
            Array("{\"i\":\(line)}".utf8).withUnsafeBytes { builder.append(line: line, record: $0) }
        }
        return builder.finish()!
    }

    static func request(_ line: Int) -> SendLedger.Request { request([line]) }

    static func ledger(
        waitsForRoom: Bool = true, maxRequestBytes: Int = 64 << 10, maxInFlight: Int = 10_000,
        maxInFlightBytes: Int = 4 << 20
    ) -> SendLedger {
        SendLedger(
            waitsForRoom: waitsForRoom, format: format, maxRequestBytes: maxRequestBytes, maxInFlight: maxInFlight,
            maxInFlightBytes: maxInFlightBytes)
    }

    /// Hands lines `lines` to the ledger as fresh input, as far as it takes them; returns the lines written.
    static func write(_ ledger: inout SendLedger, fresh lines: inout [Int]) -> [Int] {
        var written: [Int] = []
        while let request = ledger.next(fresh: { lines.isEmpty ? nil : request(lines.removeFirst()) }) {
            written.append(contentsOf: request.rows.map(\.line))
        }
        return written
    }

    /// Writes the requests given, in order, as fresh input.
    static func write(_ ledger: inout SendLedger, requests: [SendLedger.Request]) {
        var fresh = requests
        while ledger.next(fresh: { fresh.isEmpty ? nil : fresh.removeFirst() }) != nil {}
        #expect(fresh.isEmpty)
    }

    /// The requests the ledger has to send again, written now.
    static func resent(_ ledger: inout SendLedger) -> [SendLedger.Request] {
        var requests: [SendLedger.Request] = []
        while let request = ledger.next(fresh: { nil }) { requests.append(request) }
        return requests
    }

    static func accepted(_ line: Int, records: Int = 1) -> SendLedger.Reply { .accepted(ack: "\(line)", records: records) }
    static func full(_ line: Int) -> SendLedger.Reply {
        .refused(ack: "\(line)", status: 507, code: "spool_full", message: "the spool is full")
    }

    @Test func oneLineIsTheRequestSendAlwaysMadeAndSeveralAreAnArray() {
        let one = Self.request(7)
        #expect(String(decoding: one.bytes, as: UTF8.self) == #"{"ack":"7","config":{"table":"bronze.t"},"data":{"i":7}}"# + "\n")
        let three = Self.request([7, 9, 10])
        #expect(
            String(decoding: three.bytes, as: UTF8.self)
                == #"{"ack":"7","config":{"table":"bronze.t"},"data":[{"i":7},{"i":9},{"i":10}]}"# + "\n")
        #expect(three.line == 7 && three.rows.map(\.line) == [7, 9, 10])
        #expect(three.rows.map { String(decoding: three.bytes[$0.record], as: UTF8.self) } == [#"{"i":7}"#, #"{"i":9}"#, #"{"i":10}"#])
    }

    /// The agent parses what the format writes as one request holding every row, in order.
    @Test func theAgentReadsARequestOfSeveralLinesAsTheirRows() {
        var configuration = AgentConfiguration()
        configuration.intake.defaultTable = "bronze.other"
        var parser = IntakeLineParser(configuration: configuration)
        var batch = SpoolBatch()
        let request = Self.request([1, 2, 5])
        let parsed = parser.parse(line: Array(request.bytes.dropLast()), into: &batch)
        guard case .success(let accepted) = parsed.result else {
            Issue.record("refused: \(parsed.result)")
            return
        }
        #expect(accepted.records == 3)
        #expect(request.bytes.withUnsafeBytes { parsed.ack(in: $0) } == "1")
        #expect(String(decoding: batch.records[accepted.targetIndex], as: UTF8.self) == "{\"i\":1}\n{\"i\":2}\n{\"i\":5}\n")
    }

    @Test func linesGoInOrderWithinTheWindow() {
        var ledger = Self.ledger(maxInFlight: 3)
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
        var ledger = Self.ledger()
        var input = Array(1...100)
        #expect(Self.write(&ledger, fresh: &input).count == 100)
        for line in 1...50 { _ = ledger.receive(Self.accepted(line)) }
        let event = ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: "line 51 is longer than …"))
        #expect(event == .rejected(lines: [51], status: 413, code: "line_too_long", message: "the line is longer than …"))
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 49))
        var none: [Int] = []
        #expect(Self.write(&ledger, fresh: &none) == Array(52...100))
        for line in 52...100 { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.isSettled)
        #expect(ledger.totals.acceptedRecords == 99 && ledger.totals.rejectedLines == 1)
    }

    @Test func anUnexpectedEndSendsTheUnansweredLinesAgainAndSaysSo() {
        var ledger = Self.ledger()
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
        var ledger = Self.ledger()
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

    /// `busy` (503: the agent holds as much unfinished input as it keeps) means nothing was stored and the
    /// agent closes after it: the line waits and goes again, with no warning about duplicates (the agent read
    /// nothing after it). It was counted as rejected for good.
    @Test func aLineRefusedBusyWaitsAndGoesAgainAfterTheClose() {
        var ledger = Self.ledger()
        var input = Array(1...3)
        _ = Self.write(&ledger, fresh: &input)
        _ = ledger.receive(Self.accepted(1))
        #expect(ledger.receive(.refused(ack: "2", status: 503, code: "busy", message: "…")) == .waitingForRoom(line: 2))
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 1))
        #expect(ledger.totals.rejectedLines == 0)
        var none: [Int] = []
        #expect(Self.write(&ledger, fresh: &none).isEmpty, "nothing goes while a line waits for room")
        #expect(ledger.mayRetryRoomAfterWaiting)
        ledger.retryWaitingLines()
        #expect(Self.write(&ledger, fresh: &none) == [2, 3], "in order: the waiting line, then the one the agent never read")
        for line in [2, 3] { _ = ledger.receive(Self.accepted(line)) }
        #expect(ledger.isSettled && ledger.totals.acceptedRecords == 3)
    }

    /// With --no-wait, `busy` refuses a request's lines for room, like a full spool: they are summed up once
    /// at the end. It used to be taken for a refusal of one of its rows, so the request was split and sent
    /// again, with a warning that every line would go alone from then on.
    @Test func withoutWaitingARequestRefusedBusyIsRefusedForRoomNotSplit() {
        var ledger = Self.ledger(waitsForRoom: false)
        Self.write(&ledger, requests: [Self.request([1, 2, 3]), Self.request([4, 5])])
        #expect(
            ledger.receive(.refused(ack: "1", status: 503, code: "busy", message: "…"))
                == .rejected(lines: [1, 2, 3], status: 503, code: "busy", message: "…"))
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 2))
        #expect(ledger.totals.rejectedLines == 3 && ledger.totals.refusedForRoom == [1, 2, 3])
        #expect(ledger.batches && ledger.maxRequestBytes == 64 << 10, "requests keep their size")
        #expect(Self.resent(&ledger).map { $0.rows.map(\.line) } == [[4, 5]])
    }

    @Test func theWaitForRoomGrowsToItsBound() {
        var ledger = Self.ledger()
        var input = [1]
        for _ in 0..<20 {
            _ = Self.write(&ledger, fresh: &input)
            _ = ledger.receive(Self.full(1))
            ledger.retryWaitingLines()
        }
        #expect(ledger.roomWait == SendLedger.longestRoomWait)
    }

    @Test func withoutWaitingLinesRefusedForRoomAreRejectedForOneSummary() {
        var ledger = Self.ledger(waitsForRoom: false)
        var input = Array(1...4)
        _ = Self.write(&ledger, fresh: &input)
        _ = ledger.receive(Self.accepted(1))
        for line in 2...4 {
            #expect(
                ledger.receive(Self.full(line)) == .rejected(lines: [line], status: 507, code: "spool_full", message: "the spool is full"))
        }
        #expect(ledger.isSettled && ledger.totals.refusedForRoom == [2, 3, 4] && ledger.totals.rejectedLines == 3)
    }

    @Test func aReplyForAnotherLineIsOutOfStep() {
        var ledger = Self.ledger()
        var input = [1, 2]
        _ = Self.write(&ledger, fresh: &input)
        guard case .outOfStep = ledger.receive(Self.accepted(2)) else {
            Issue.record("a reply for line 2 was taken as line 1's")
            return
        }
    }

    @Test func theWindowBoundsTheBytesHeldForResending() {
        var ledger = Self.ledger(maxInFlight: 1000, maxInFlightBytes: 200)
        var input = Array(1...50)
        let written = Self.write(&ledger, fresh: &input)
        #expect(written.count < 10 && written.count > 1)
    }

    @Test func repliesAreReadAsTheProtocolWritesThem() {
        func reply(_ text: String) -> SendLedger.Reply? { SendSession.reply(ArraySlice(text.utf8)) }
        #expect(reply(#"{"ack":"7","ok":true,"accepted":1}"#) == .accepted(ack: "7", records: 1))
        #expect(
            reply(#"{"ack":"8","ok":false,"status":422,"code":"invalid_config","error":"no"}"#)
                == .refused(ack: "8", status: 422, code: "invalid_config", message: "no"))
        #expect(
            reply(#"{"ok":false,"line":3,"status":413,"code":"line_too_long","error":"long"}"#)
                == .refused(ack: nil, status: 413, code: "line_too_long", message: "long"))
        #expect(reply("garbage") == nil)
        #expect(reply(#"{"ack":"7","ok":true}"#) == nil)
    }

    // MARK: Requests of several lines

    @Test func aRequestOfSeveralLinesCountsEachLine() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2, 3]), Self.request([4, 6])])
        #expect(ledger.unconfirmed == 5)
        #expect(ledger.receive(Self.accepted(1, records: 3)) == .accepted(line: 1, records: 3))
        #expect(ledger.receive(Self.accepted(4, records: 2)) == .accepted(line: 4, records: 2))
        #expect(ledger.isSettled && ledger.totals.acceptedRecords == 5)
    }

    /// A refusal for a reason common to the request's lines (its config, storage) rejects each of them,
    /// so each is reported with its line number.
    @Test func aRequestRefusedForItsConfigRejectsEveryLine() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2, 4])])
        let event = ledger.receive(.refused(ack: "1", status: 422, code: "invalid_config", message: "bad mode"))
        #expect(event == .rejected(lines: [1, 2, 4], status: 422, code: "invalid_config", message: "bad mode"))
        #expect(ledger.isSettled && ledger.totals.rejectedLines == 3)
    }

    /// The agent refused a request for one of its rows (send's own check let it through, e.g. a merge key
    /// only the agent's configuration asks for): its lines go again one per request, before anything new,
    /// each to get its own answer, and every later line goes alone.
    @Test func aRequestRefusedForOneRowGoesAgainLineByLineAndBatchingStops() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2, 3]), Self.request([4, 5])])
        let event = ledger.receive(.refused(ack: "1", status: 400, code: "missing_primary_key", message: "data[1]: primary key …"))
        #expect(event == .split(line: 1, lines: 3, code: "missing_primary_key"))
        #expect(!ledger.batches && ledger.totals.rejectedLines == 0 && ledger.unconfirmed == 5)
        let again = Self.resent(&ledger)
        #expect(again == [Self.request(1), Self.request(2), Self.request(3)])
        _ = ledger.receive(Self.accepted(4, records: 2))
        _ = ledger.receive(Self.accepted(1))
        #expect(
            ledger.receive(.refused(ack: "2", status: 400, code: "missing_primary_key", message: "primary key …"))
                == .rejected(lines: [2], status: 400, code: "missing_primary_key", message: "primary key …"))
        _ = ledger.receive(Self.accepted(3))
        #expect(ledger.isSettled && ledger.totals.acceptedRecords == 4 && ledger.totals.rejectedLines == 1)
    }

    /// The agent refused a request as longer than its max_line_bytes (and closed the connection): the
    /// request goes again in parts of at most half its size, later requests are made as small, and those
    /// already made are regrouped to fit before they go again.
    @Test func aRequestTooLongGoesAgainInSmallerOnesAndLaterOnesFit() {
        var ledger = Self.ledger()
        let lines = Array(1...40)
        let first = Self.request(Array(lines[0..<20]))
        let second = Self.request(Array(lines[20...]))
        Self.write(&ledger, requests: [first, second])
        let event = ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: "line 1 is longer than …"))
        #expect(event == .split(line: 1, lines: 20, code: "line_too_long"))
        #expect(ledger.maxRequestBytes == first.bytes.count / 2 && ledger.batches)
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 20))
        let again = Self.resent(&ledger)
        #expect(again.flatMap { $0.rows.map(\.line) } == lines)
        #expect(again.count >= 4 && again.allSatisfy { $0.bytes.count <= ledger.maxRequestBytes })
        for request in again {
            #expect(
                ledger.receive(Self.accepted(request.line, records: request.rows.count))
                    == .accepted(line: request.line, records: request.rows.count))
        }
        #expect(ledger.isSettled && ledger.totals.acceptedRecords == 40)
    }

    /// Halving ends at one line a request; a line too long on its own is rejected, as before batching.
    @Test func aLineTooLongOnItsOwnIsRejectedAfterTheSplits() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2])])
        #expect(
            ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: "long"))
                == .split(line: 1, lines: 2, code: "line_too_long"))
        _ = ledger.connectionLost()
        #expect(Self.resent(&ledger) == [Self.request(1), Self.request(2)])
        #expect(
            ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: "long"))
                == .rejected(lines: [1], status: 413, code: "line_too_long", message: "long"))
        #expect(ledger.connectionLost() == .afterLineTooLong(resent: 1))
        #expect(Self.resent(&ledger) == [Self.request(2)])
        _ = ledger.receive(Self.accepted(2))
        #expect(ledger.isSettled && ledger.totals.rejectedLines == 1 && ledger.totals.acceptedRecords == 1)
    }

    /// The agent numbers a line too long by its count on the connection; send reports it under the input's.
    @Test func aLineTooLongIsReportedWithoutTheAgentsLineNumber() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request(51)])
        let message = "line 2 is longer than [intake] max_line_bytes (1 KiB); closing the connection"
        #expect(
            ledger.receive(.refused(ack: nil, status: 413, code: "line_too_long", message: message))
                == .rejected(
                    lines: [51], status: 413, code: "line_too_long", message: "the line is longer than [intake] max_line_bytes (1 KiB)"))
        #expect(SendLedger.inSendTerms("line 2: field x", code: "invalid_row") == "line 2: field x")
        #expect(SendLedger.inSendTerms("lines are odd", code: "line_too_long") == "lines are odd")
    }

    @Test func aRequestRefusedForRoomWaitsWholeAndCountsEachLine() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2, 3])])
        #expect(ledger.receive(Self.full(1)) == .waitingForRoom(line: 1))
        ledger.retryWaitingLines()
        #expect(Self.resent(&ledger) == [Self.request([1, 2, 3])])
        _ = ledger.receive(Self.accepted(1, records: 3))
        #expect(ledger.isSettled && ledger.totals.waitedForRoom == 3)

        var noWait = Self.ledger(waitsForRoom: false)
        Self.write(&noWait, requests: [Self.request([1, 2, 3])])
        #expect(noWait.receive(Self.full(1)) == .rejected(lines: [1, 2, 3], status: 507, code: "spool_full", message: "the spool is full"))
        #expect(noWait.totals.refusedForRoom == [1, 2, 3] && noWait.totals.rejectedLines == 3)
    }

    /// The storage of an answered request serves the next one.
    @Test func anAnsweredRequestsStorageIsReused() {
        var ledger = Self.ledger()
        Self.write(&ledger, requests: [Self.request([1, 2])])
        _ = ledger.receive(Self.accepted(1, records: 2))
        let buffer = ledger.spareBuffer()
        #expect(buffer.capacity > 0)
        var builder = SendRequestFormat.Builder(format: Self.format, firstLine: 3, capacity: 16, buffer: buffer)
        Array(#"{"i":3}"#.utf8).withUnsafeBytes { builder.append(line: 3, record: $0) }
        #expect(builder.finish() == Self.request(3))
    }

    /// A stopped send says where to take the input up again: the first line not answered for good, wherever
    /// it waits (in flight, to go again after a split, for room), though later lines were answered.
    @Test func theFirstUnconfirmedLineIsWhereASendStoppedCanGoOnFrom() {
        var ledger = Self.ledger()
        #expect(ledger.firstUnconfirmedLine == nil)
        Self.write(&ledger, requests: [Self.request([1, 2, 3]), Self.request([4, 5]), Self.request([6])])
        #expect(ledger.firstUnconfirmedLine == 1)
        // Split: lines 1–3 go again one by one, after 4–5 and 6, which are in flight.
        _ = ledger.receive(.refused(ack: "1", status: 400, code: "missing_primary_key", message: "data[1]: primary key …"))
        #expect(ledger.firstUnconfirmedLine == 1)
        _ = ledger.receive(Self.accepted(4, records: 2))
        _ = Self.resent(&ledger)
        #expect(ledger.firstUnconfirmedLine == 1)
        _ = ledger.receive(Self.accepted(6))
        _ = ledger.receive(Self.accepted(1))
        #expect(ledger.firstUnconfirmedLine == 2)
        #expect(ledger.receive(Self.full(2)) == .waitingForRoom(line: 2))
        _ = ledger.receive(Self.accepted(3))
        #expect(ledger.firstUnconfirmedLine == 2 && ledger.unconfirmed == 1 && ledger.waitingForRoom == 1)
        ledger.retryWaitingLines()
        #expect(ledger.firstUnconfirmedLine == 2)
        _ = Self.resent(&ledger)
        _ = ledger.receive(Self.accepted(2))
        #expect(ledger.firstUnconfirmedLine == nil && ledger.isSettled)
    }

    @Test func aStoppedSendSaysWhatMayBeStoredAndWhereToGoOnFrom() {
        let stopped = SendSession.Stop(lastLineRead: 120, firstUnconfirmedLine: 101, unconfirmed: 20, waitingForRoom: 5)
        #expect(stopped.resumeLine == 101)
        #expect(
            stopped.description(input: "/data/events.ndjson")
                == "stopped after reading 120 lines; 15 lines from line 101 on were sent but not confirmed: they may or may not be stored; 5 lines the agent refused for room (507 or 503 busy) were not stored; every line before line 101 was answered (the counts above); to finish, send the input again from line 101 (tail -n +101 /data/events.ndjson)"
        )
        let settled = SendSession.Stop(lastLineRead: 7, firstUnconfirmedLine: nil, unconfirmed: 0, waitingForRoom: 0)
        #expect(settled.resumeLine == 8)
        #expect(
            settled.description(input: nil)
                == "stopped after reading 7 lines; every line before line 8 was answered (the counts above); to finish, send the input again from line 8 (tail -n +8 FILE)"
        )
        let unanswered = SendSession.Stop(lastLineRead: 3, firstUnconfirmedLine: 1, unconfirmed: 3, waitingForRoom: 0)
        #expect(
            unanswered.description(input: nil)
                == "stopped after reading 3 lines; 3 lines from line 1 on were sent but not confirmed: they may or may not be stored; no line was answered: to finish, send the whole input again"
        )
        #expect(SendSession.Stop.shellWord("my events's.ndjson") == #"'my events'\''s.ndjson'"#)
        #expect(SendSession.Stop.shellWord("") == "''")
    }
}

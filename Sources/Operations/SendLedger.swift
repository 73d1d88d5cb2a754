import DequeModule
import Intake

/// How `definite-agent send` wraps input lines into requests of the line protocol: one line as
/// `{"ack":"<n>","config":{…},"data":<record>}`, several as `…"data":[<record>,<record>,…]}`. The ack id is
/// the number of the first input line the request carries.
///
/// A request of one line is exactly the request `send` made before it batched (the agent's messages about
/// it read the same, without a `data[i]` prefix).
struct SendRequestFormat: Sendable {
    /// `","config":{…},"data":`: what follows the ack id.
    let afterAck: [UInt8]

    /// `config` is the request's `config` object as compact JSON.
    init(config: String) {
        afterAck = Array("\",\"config\":\(config),\"data\":".utf8)
    }

    /// Builds one request, row by row, straight into its bytes.
    struct Builder {
        private(set) var bytes: [UInt8] = []
        private(set) var rows: [SendLedger.Row] = []
        private var dataStart = 0

        /// `buffer`: storage to reuse (its contents are dropped), e.g. ``SendLedger/spareBuffer()``.
        init(format: SendRequestFormat, firstLine: Int, capacity: Int, buffer: [UInt8] = []) {
            bytes = buffer
            bytes.removeAll(keepingCapacity: true)
            bytes.reserveCapacity(capacity)
            bytes.append(contentsOf: #"{"ack":""#.utf8)
            bytes.append(contentsOf: String(firstLine).utf8)
            bytes.append(contentsOf: format.afterAck)
            dataStart = bytes.count
        }

        /// Bytes the request would have if it ended now (with its closing bytes).
        var count: Int { bytes.count + (rows.count > 1 ? 3 : 2) }

        /// Appends one record (a line already checked to be one JSON object).
        mutating func append(line: Int, record: UnsafeRawBufferPointer) {
            if rows.count == 1 {
                // A second record: the data becomes an array.
                bytes.insert(UInt8(ascii: "["), at: dataStart)
                rows[0].record = rows[0].record.lowerBound + 1..<rows[0].record.upperBound + 1
            }
            if !rows.isEmpty { bytes.append(UInt8(ascii: ",")) }
            let start = bytes.count
            bytes.append(contentsOf: record)
            rows.append(SendLedger.Row(line: line, record: start..<bytes.count))
        }

        /// The finished request; `nil` when no record was appended.
        consuming func finish() -> SendLedger.Request? {
            guard let first = rows.first else { return nil }
            if rows.count > 1 { bytes.append(UInt8(ascii: "]")) }
            bytes.append(UInt8(ascii: "}"))
            bytes.append(UInt8(ascii: "\n"))
            return SendLedger.Request(rows: rows, bytes: bytes, line: first.line)
        }
    }

    /// A request carrying `rows` of `source`'s bytes (a request being split).
    func request(rows: ArraySlice<SendLedger.Row>, of source: SendLedger.Request) -> SendLedger.Request {
        var builder = Builder(
            format: self, firstLine: rows.first!.line,
            capacity: afterAck.count + 32 + rows.reduce(0) { $0 + $1.record.count + 1 })
        source.bytes.withUnsafeBytes { raw in
            for row in rows { builder.append(line: row.line, record: UnsafeRawBufferPointer(rebasing: raw[row.record])) }
        }
        return builder.finish()!
    }
}

/// The bookkeeping of `definite-agent send`: which input lines are in flight on the connection, which go
/// again (after the connection was lost, or once the agent's spool has room), and what became of each.
///
/// Lines travel in requests of one or more lines (``SendRequestFormat``); the agent takes or refuses a
/// request as a whole. ``maxRequestBytes`` and ``batches`` say how ``SendSession`` may group fresh lines.
///
/// It is pure: ``SendCommand``'s I/O loop tells it what happened (a reply, a lost connection) and does what
/// it answers, so every rule is tested without a socket.
///
/// - Important: Every line handed over through ``next(fresh:)`` ends in exactly one of the totals
///   (accepted or rejected), or is still held here (``unconfirmed``) when the command gives up. Lines go to
///   the agent in input order, except lines refused because the spool was full: they go again, in order,
///   after the lines that were already in flight behind them; and except the other lines of a request the
///   agent refused for one of its rows (which `send` checks every line for beforehand, so this happens only
///   when the agent applies rules `send` was not told of, such as a `[[table]]` merge key): they go again,
///   one per request, after the requests already in flight, and from then on every line goes alone.
struct SendLedger {
    /// One input line in a request: its line number and where its record lies in the request's bytes.
    struct Row: Equatable, Sendable {
        var line: Int
        var record: Range<Int>
    }

    /// Input lines wrapped as one request, with the first line's number as the ack id.
    struct Request: Equatable, Sendable {
        var rows: [Row]
        var bytes: [UInt8]
        /// The first line's number: the request's ack id.
        var line: Int
    }

    /// A reply line from the agent, as far as the ledger cares.
    enum Reply: Equatable, Sendable {
        case accepted(ack: String, records: Int)
        /// `ack` is `nil` when the agent could not read the request's ack (a line too long, not JSON).
        case refused(ack: String?, status: Int, code: String, message: String)
    }

    /// What a reply meant for its lines.
    enum Event: Equatable, Sendable {
        case accepted(line: Int, records: Int)
        /// The request's lines are refused for good, for the same reason.
        case rejected(lines: [Int], status: Int, code: String, message: String)
        /// Refused because the agent's spool is full; the lines go again once the spool has room.
        case waitingForRoom(line: Int)
        /// The agent refused a request of several lines for one of them, or as longer than its
        /// `max_line_bytes`: its lines go again in smaller requests, so that each line gets its own answer.
        case split(line: Int, lines: Int, code: String)
        /// The reply does not belong to the request it answers: the connection cannot be trusted.
        case outOfStep(String)
    }

    /// What a lost connection means for the lines in flight on it.
    enum Loss: Equatable, Sendable {
        /// The agent closed after refusing a line (too long, or `busy`): it read nothing after that line, so
        /// the lines behind it go again without any risk of being stored twice.
        case afterLineTooLong(resent: Int)
        /// The connection ended otherwise: the agent may have stored some of these before it went.
        case unexpected(unanswered: Int)
    }

    /// Counts for the summary.
    struct Totals: Equatable, Sendable {
        /// Records the agent made durable.
        var acceptedRecords = 0
        /// Lines refused for good (by the agent, or locally before sending).
        var rejectedLines = 0
        /// Of `rejectedLines`, those refused because the spool was full (only without waiting).
        var refusedForRoom: [Int] = []
        /// Lines that waited for room at least once.
        var waitedForRoom = 0
        /// Times the lines waiting for room were sent again.
        var roomRetries = 0
    }

    /// Codes the agent refuses a request with because of one of its rows (its JSON, depth, field sizes,
    /// merge key): a request of several lines refused so is split, so that each line gets its own answer.
    static let rowCodes: Set<String> = Set(
        [
            IntakeRejection.Code.invalidJSON, .invalidUTF8, .tooDeep, .invalidRow, .missingPrimaryKey, .fieldTooLarge, .rowTooLarge,
            .tooManyRows,
        ].map(\.rawValue))

    /// Whether a 507 (spool full) means "wait and send again" (`true`) or "rejected".
    let waitsForRoom: Bool
    /// At most this many requests, and about this many bytes, in flight: bounds what is held for resending.
    let maxInFlight: Int
    let maxInFlightBytes: Int
    let format: SendRequestFormat
    /// How large a request of several lines may be; halved (down to one line a request) each time the
    /// agent refuses one as longer than its `max_line_bytes`.
    private(set) var maxRequestBytes: Int
    /// Whether fresh lines may share a request; off for good once the agent refused a request for one
    /// of its rows.
    private(set) var batches: Bool

    private(set) var totals = Totals()
    /// The storage of requests answered, for the next ones: a request's bytes are allocated once, not
    /// for every request (fresh pages cost a page fault each on their first write).
    private var spare: [[UInt8]] = []
    private var inFlight = Deque<Request>()
    private var inFlightBytes = 0
    /// Lines to send before any new one, in line order.
    private var again = Deque<Request>()
    /// Lines refused for want of room, in line order, until the lines in flight are answered.
    private var waiting: [Request] = []
    private var waitedLines = Set<Int>()
    /// The last refusal closed the connection (a line too long).
    private var refusalClosesConnection = false
    /// How long to wait before sending the lines refused for room again.
    private(set) var roomWait = SendLedger.firstRoomWait

    static let firstRoomWait = Duration.milliseconds(500)
    static let longestRoomWait = Duration.seconds(30)

    init(
        waitsForRoom: Bool, format: SendRequestFormat, maxRequestBytes: Int = 64 << 10, batches: Bool = true,
        maxInFlight: Int = 10_000, maxInFlightBytes: Int = 4 << 20
    ) {
        self.waitsForRoom = waitsForRoom
        self.format = format
        self.maxRequestBytes = maxRequestBytes
        self.batches = batches
        self.maxInFlight = maxInFlight
        self.maxInFlightBytes = maxInFlightBytes
    }

    /// Whether lines wait to be sent again (they go before any new one).
    var hasLinesToSendAgain: Bool { !again.isEmpty }

    /// Whether another request may be written now: the window has room and no line waits for room.
    var mayWrite: Bool { waiting.isEmpty && inFlight.count < maxInFlight && inFlightBytes < maxInFlightBytes }

    /// The next request to write, if one may go now: lines to send again first, else `fresh()` (the next
    /// input lines, `nil` at its end). The request counts as in flight from here on.
    mutating func next(fresh: () -> Request?) -> Request? {
        guard mayWrite, let request = again.popFirst() ?? fresh() else { return nil }
        inFlight.append(request)
        inFlightBytes += request.bytes.count
        return request
    }

    /// Storage for the next request's bytes (empty, with the capacity of an answered request's).
    mutating func spareBuffer() -> [UInt8] {
        spare.popLast() ?? []
    }

    /// A line refused before it was sent (it cannot be one record).
    mutating func rejectLocally() {
        totals.rejectedLines += 1
    }

    /// The agent's reply to the oldest request in flight (replies come in request order).
    mutating func receive(_ reply: Reply) -> Event {
        guard let head = inFlight.popFirst() else { return .outOfStep("a reply arrived with no request in flight") }
        inFlightBytes -= head.bytes.count
        switch reply {
        case .accepted(let ack, let records):
            guard ack == String(head.line) else {
                return .outOfStep("the reply for line \(ack) arrived where line \(head.line)'s was due")
            }
            totals.acceptedRecords += records
            if spare.count < 16 { spare.append(head.bytes) }
            roomWait = Self.firstRoomWait
            refusalClosesConnection = false
            return .accepted(line: head.line, records: records)
        case .refused(let ack, let status, let code, let message):
            if let ack, ack != String(head.line) {
                return .outOfStep("the reply for line \(ack) arrived where line \(head.line)'s was due")
            }
            // `busy` (the agent holds as much unfinished input as it keeps) also closes the connection after
            // the refused line, and means retry: its lines wait as for a full spool.
            let busy = code == IntakeRejection.Code.busy.rawValue
            refusalClosesConnection = code == IntakeRejection.Code.lineTooLong.rawValue || busy
            if status == 507 || busy, waitsForRoom {
                waiting.append(head)
                for row in head.rows where waitedLines.insert(row.line).inserted { totals.waitedForRoom += 1 }
                return .waitingForRoom(line: head.line)
            }
            // `busy` (with --no-wait) is about the agent's memory, not these lines: they are refused for room.
            if head.rows.count > 1, !busy, refusalClosesConnection || Self.rowCodes.contains(code) {
                split(head, closing: refusalClosesConnection)
                return .split(line: head.line, lines: head.rows.count, code: code)
            }
            let lines = head.rows.map(\.line)
            totals.rejectedLines += lines.count
            if status == 507 || busy { totals.refusedForRoom += lines }
            return .rejected(lines: lines, status: status, code: code, message: Self.inSendTerms(message, code: code))
        }
    }

    /// The agent's message as send reports it beside its own line numbers. For a line too long the agent
    /// counts lines on the connection ("line 2 is longer than …; closing the connection"), which is neither
    /// the input's line nor send's, and send reconnects by itself: "line 51: 413: line 2 is longer" read
    /// as two different lines.
    static func inSendTerms(_ message: String, code: String) -> String {
        guard code == IntakeRejection.Code.lineTooLong.rawValue else { return message }
        var text = Substring(message)
        let closing = "; closing the connection"
        if text.hasSuffix(closing) { text = text.dropLast(closing.count) }
        let numbered = text.drop { $0 != " " }.dropFirst().drop(while: \.isNumber)
        if text.hasPrefix("line "), numbered.hasPrefix(" is "), numbered.count < text.count - 5 { text = "the line" + numbered }
        return String(text)
    }

    /// A request of several lines the agent refused as a whole goes again in parts: in requests of at most
    /// half its size when it was too long (later requests are kept as small), one line a request when one
    /// of its rows was refused (and from then on every line goes alone).
    private mutating func split(_ request: Request, closing: Bool) {
        if closing {
            maxRequestBytes = min(maxRequestBytes, request.bytes.count / 2)
        } else {
            batches = false
        }
        again = Deque((regrouped(request) + Array(again)).sorted { $0.line < $1.line })
    }

    /// `request`'s lines in requests that fit ``maxRequestBytes`` (one line a request without
    /// ``batches``); a line too large for the bound goes alone.
    private func regrouped(_ request: Request) -> [Request] {
        guard request.rows.count > 1, !batches || request.bytes.count > maxRequestBytes else { return [request] }
        var parts: [Request] = []
        var first = 0
        var bytes = request.bytes.count - request.rows.reduce(0) { $0 + $1.record.count + 1 }
        let overhead = bytes
        for (i, row) in request.rows.enumerated() {
            if i > first, !batches || bytes + row.record.count + 1 > maxRequestBytes {
                parts.append(format.request(rows: request.rows[first..<i], of: request))
                first = i
                bytes = overhead
            }
            bytes += row.record.count + 1
        }
        parts.append(format.request(rows: request.rows[first...], of: request))
        return parts
    }

    /// The connection ended: every line in flight goes again, in order, before anything new.
    mutating func connectionLost() -> Loss {
        let unanswered = self.unanswered
        // Requests made before the agent refused one as too long are made to fit what was learnt since.
        again = Deque((Array(inFlight) + Array(again)).flatMap(regrouped).sorted { $0.line < $1.line })
        inFlight.removeAll()
        inFlightBytes = 0
        defer { refusalClosesConnection = false }
        return refusalClosesConnection ? .afterLineTooLong(resent: unanswered) : .unexpected(unanswered: unanswered)
    }

    /// Lines wait for room and nothing else is in flight: after ``roomWait`` they may go again.
    var mayRetryRoomAfterWaiting: Bool { !waiting.isEmpty && inFlight.isEmpty }

    /// Sends the lines that waited for room again (before anything new), and doubles the next wait up to
    /// ``longestRoomWait`` (an accepted line resets it).
    mutating func retryWaitingLines() {
        again = Deque((waiting + Array(again)).sorted { $0.line < $1.line })
        waiting.removeAll()
        totals.roomRetries += 1
        roomWait = min(roomWait * 2, Self.longestRoomWait)
    }

    /// Nothing in flight, to send again or waiting: done once the input is exhausted too.
    var isSettled: Bool { inFlight.isEmpty && again.isEmpty && waiting.isEmpty }

    /// Whether lines were handed over and wait for the agent's reply.
    var awaitsReplies: Bool { !inFlight.isEmpty }

    /// Lines handed over and waiting for the agent's reply.
    var unanswered: Int { inFlight.reduce(0) { $0 + $1.rows.count } }

    /// The first line handed over and not yet answered for good, if any: every line before it is answered
    /// (accepted or rejected), so a stopped send can be taken up again from there.
    var firstUnconfirmedLine: Int? {
        // Requests go in flight out of line order once some are split and sent again: look at every one.
        [inFlight.map(\.line).min(), again.map(\.line).min(), waiting.map(\.line).min()].compactMap { $0 }.min()
    }

    /// Lines the agent refused for room (507, 503 busy), waiting to go again: none of them is stored.
    var waitingForRoom: Int { waiting.reduce(0) { $0 + $1.rows.count } }

    /// Lines handed over and not yet answered for good (in flight, to go again, waiting for room).
    var unconfirmed: Int {
        inFlight.reduce(0) { $0 + $1.rows.count } + again.reduce(0) { $0 + $1.rows.count } + waiting.reduce(0) { $0 + $1.rows.count }
    }
}

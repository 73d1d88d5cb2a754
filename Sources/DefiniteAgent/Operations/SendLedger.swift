import DequeModule

/// The bookkeeping of `definite-agent send`: which input lines are in flight on the connection, which go
/// again (after the connection was lost, or once the agent's spool has room), and what became of each.
///
/// It is pure: ``SendCommand``'s I/O loop tells it what happened (a reply, a lost connection) and does what
/// it answers, so every rule is tested without a socket.
///
/// - Important: Every line handed over through ``next(fresh:)`` ends in exactly one of the totals
///   (accepted or rejected), or is still held here (``unconfirmed``) when the command gives up. Lines go to
///   the agent in input order, except lines refused because the spool was full: they go again, in order,
///   after the lines that were already in flight behind them.
struct SendLedger {
    /// One input line wrapped as a request, with its line number as the ack id.
    struct Request: Equatable, Sendable {
        var line: Int
        var bytes: [UInt8]
    }

    /// A reply line from the agent, as far as the ledger cares.
    enum Reply: Equatable, Sendable {
        case accepted(ack: String, records: Int)
        /// `ack` is `nil` when the agent could not read the request's ack (a line too long, not JSON).
        case refused(ack: String?, status: Int, code: String, message: String)
    }

    /// What a reply meant for its line.
    enum Event: Equatable, Sendable {
        case accepted(line: Int, records: Int)
        case rejected(line: Int, status: Int, code: String, message: String)
        /// Refused because the agent's spool is full; the line goes again once the spool has room.
        case waitingForRoom(line: Int)
        /// The reply does not belong to the request it answers: the connection cannot be trusted.
        case outOfStep(String)
    }

    /// What a lost connection means for the lines in flight on it.
    enum Loss: Equatable, Sendable {
        /// The agent closed after refusing a line too long: it read nothing after that line, so the lines
        /// behind it go again without any risk of being stored twice.
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

    /// Whether a 507 (spool full) means "wait and send again" (`true`) or "rejected".
    let waitsForRoom: Bool
    /// At most this many requests, and about this many bytes, in flight: bounds what is held for resending.
    let maxInFlight: Int
    let maxInFlightBytes: Int

    private(set) var totals = Totals()
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

    init(waitsForRoom: Bool, maxInFlight: Int = 10_000, maxInFlightBytes: Int = 4 << 20) {
        self.waitsForRoom = waitsForRoom
        self.maxInFlight = maxInFlight
        self.maxInFlightBytes = maxInFlightBytes
    }

    /// Whether lines wait to be sent again (they go before any new one).
    var hasLinesToSendAgain: Bool { !again.isEmpty }

    /// Whether another request may be written now: the window has room and no line waits for room.
    var mayWrite: Bool { waiting.isEmpty && inFlight.count < maxInFlight && inFlightBytes < maxInFlightBytes }

    /// The next request to write, if one may go now: a line to send again first, else `fresh()` (the next
    /// input line, `nil` at its end). The request counts as in flight from here on.
    mutating func next(fresh: () -> Request?) -> Request? {
        guard mayWrite, let request = again.popFirst() ?? fresh() else { return nil }
        inFlight.append(request)
        inFlightBytes += request.bytes.count
        return request
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
            roomWait = Self.firstRoomWait
            refusalClosesConnection = false
            return .accepted(line: head.line, records: records)
        case .refused(let ack, let status, let code, let message):
            if let ack, ack != String(head.line) {
                return .outOfStep("the reply for line \(ack) arrived where line \(head.line)'s was due")
            }
            refusalClosesConnection = code == IntakeRejection.Code.lineTooLong.rawValue
            if status == 507, waitsForRoom {
                waiting.append(head)
                if waitedLines.insert(head.line).inserted { totals.waitedForRoom += 1 }
                return .waitingForRoom(line: head.line)
            }
            totals.rejectedLines += 1
            if status == 507 { totals.refusedForRoom.append(head.line) }
            return .rejected(line: head.line, status: status, code: code, message: message)
        }
    }

    /// The connection ended: every line in flight goes again, in order, before anything new.
    mutating func connectionLost() -> Loss {
        let unanswered = inFlight.count
        again = Deque((Array(inFlight) + Array(again)).sorted { $0.line < $1.line })
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

    /// Lines handed over and not yet answered for good (in flight, to go again, waiting for room).
    var unconfirmed: Int { inFlight.count + again.count + waiting.count }
}

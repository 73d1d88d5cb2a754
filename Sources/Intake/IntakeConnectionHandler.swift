import Core
import DequeModule
import Logging
import Metrics
import NIOCore
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// Serves one intake connection: splits what it reads into lines, parses them, hands each read burst to
/// the spool writer as one batch, and answers in line order once the batch is durable.
///
/// Framing: a line ends at `\n` (a `\r` before it is dropped). Lines are parsed where they lie in the
/// read buffer; only an unfinished last line is kept (copied) until the next read. A line longer than
/// `[intake] max_line_bytes`, finished or not, is refused with 413 and the connection closed; input that
/// ends inside a line gets a 400 for it. Everything before either is answered first.
///
/// Ordering: replies go out in the order lines arrived, whether they were refused at once or waited for
/// a commit. Back-pressure: while `maxOutstandingBatches` batches await their commit, while the socket
/// will not take our replies, or while all connections' batches in flight fill the shared
/// ``IntakeMemoryBudget``, the connection is not read, so memory stays bounded however fast or slow the
/// clients are and however many there are. A burst handles at most `maxLinesPerBurst` lines, so the
/// replies one read can queue for a client that does not read them stay small; the lines after wait in
/// the read buffer for the next burst.
final class IntakeConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// How many committed-but-unanswered bursts a connection may have before it stops being read.
    static let maxOutstandingBatches = 2

    /// The most lines one burst handles (a read cycle of bulk records holds a few thousand). Each line is
    /// answered, and a refused one in ~100 bytes: a read of 512 KiB of empty lines would otherwise queue
    /// 56 MB of replies for a client that does not read them. Lines beyond wait in the read buffer, and
    /// the socket is not read until they are handled.
    static let maxLinesPerBurst = 16_384

    /// One line's answer-to-be. Kept small (16 bytes; an accepted line's holds nothing to retain): a
    /// burst holds one per line until its commit. The line number is not stored: a burst's entries are
    /// consecutive lines from `Burst.firstLine`.
    private enum Entry {
        case accepted(ack: AckID, records: Int32)
        indirect case refused(ack: AckID, IntakeRejection)
    }

    /// Where a line's ack id lies in its burst's `ackBytes`: the bytes between the request's quotes, as
    /// sent. A burst is at most a few reads plus one line (`max_line_bytes` ≤ 1 GiB), so 32 bits do.
    private struct AckID {
        var offset: UInt32
        /// -1: the line had no ack.
        var length: Int32
        static let none = AckID(offset: 0, length: -1)
    }

    /// What has been read since the last submit (the lines' answers-to-be, their records and ack ids),
    /// and the parser and line count that carry over between bursts. It changes on every line, so it is
    /// one value: a read's lines are handled with one exclusive access to the handler's state instead of
    /// several per line.
    private struct Reading {
        var parser: IntakeLineParser
        /// The number of the last line read on this connection.
        var lineNumber = 0
        var batch = SpoolBatch()
        var entries: [Entry] = []
        /// The ack ids of `entries`, back to back.
        var ackBytes: [UInt8] = []
        /// Whether an accepted line of this burst asked for an ack: its client waits for the commit.
        var awaited = false

        mutating func handle(line: UnsafeRawBufferPointer, capacity: SpoolCapacity) {
            lineNumber += 1
            let parsed = parser.parse(line: line, into: &batch)
            var ack = AckID.none
            if let range = parsed.ackRange {
                ack = AckID(offset: UInt32(ackBytes.count), length: Int32(range.count))
                ackBytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: line[range]))
            }
            switch parsed.result {
            case .success(let accepted):
                if batch.admit(accepted, into: capacity) {
                    entries.append(.accepted(ack: ack, records: Int32(accepted.records)))
                    if ack.length >= 0 { awaited = true }
                } else {
                    entries.append(
                        .refused(
                            ack: ack,
                            IntakeRejection(
                                .spoolFull,
                                "the spool is full ([spool] max_bytes = \(ByteSize(bytes: capacity.limit))); nothing from this request was stored, retry later"
                            )))
                }
            case .failure(let rejection):
                entries.append(.refused(ack: ack, rejection))
            }
        }

        /// A refusal of the next line as a whole (too long, cut off), which has no ack.
        mutating func refuseLine(_ rejection: (_ lineNumber: Int) -> IntakeRejection) {
            lineNumber += 1
            entries.append(.refused(ack: .none, rejection(lineNumber)))
        }

        /// Hands over what was read since the last submit and starts afresh. The burst owns the buffers
        /// from then on; keeping their capacity here would hold a second buffer of that size per
        /// connection while idle.
        mutating func takeBurst() -> (batch: SpoolBatch, entries: [Entry], ackBytes: [UInt8], awaited: Bool) {
            defer {
                batch = SpoolBatch()
                entries = []
                ackBytes = []
                awaited = false
            }
            return (batch, entries, ackBytes, awaited)
        }
    }

    private final class Burst {
        let entries: [Entry]
        let ackBytes: [UInt8]
        /// The line number of `entries[0]`.
        let firstLine: Int
        var outcome: Result<Void, IntakeRejection>?
        let started: ContinuousClock.Instant
        init(entries: [Entry], ackBytes: [UInt8], firstLine: Int, outcome: Result<Void, IntakeRejection>?, started: ContinuousClock.Instant)
        {
            self.entries = entries
            self.ackBytes = ackBytes
            self.firstLine = firstLine
            self.outcome = outcome
            self.started = started
        }
    }

    private let writer: SpoolWriter
    private let budget: IntakeMemoryBudget
    /// What this connection carries (`carried`: its unfinished line, or lines waiting for the next burst),
    /// counted with every connection's (``UnfinishedInputBudget``).
    private var unfinished: UnfinishedInputShare
    private let logger: Logger
    private let maxLineBytes: Int
    private var reading: Reading
    private var outstanding = Deque<Burst>()
    private var readHeld = false
    private var closing = false
    /// The last reply written: it completes once every reply before it has reached the socket too.
    private var lastReply: EventLoopFuture<Void>?
    private var burstStarted: ContinuousClock.Instant?
    /// Whether this connection waits for room in the shared budget (and will be woken for it).
    private var waitingForBudget = false
    /// Input read but not handled yet: the start of a line whose newline has not arrived, or, when a burst
    /// reached ``maxLinesPerBurst``, whole lines that wait for the next burst.
    private var carried: ByteBuffer?
    /// Leading bytes of `carried` known to hold no newline: all of an unfinished line, none of waiting lines.
    private var carriedNewlineFree = 0
    /// `carried` holds whole lines: they are handled, a burst at a time, before the socket is read again.
    private var linesWaiting: Bool { carried != nil && carriedNewlineFree == 0 }

    init(
        configuration: AgentConfiguration, writer: SpoolWriter, budget: IntakeMemoryBudget,
        unfinishedInput: UnfinishedInputBudget = UnfinishedInputBudget(), logger: Logger
    ) {
        self.writer = writer
        self.budget = budget
        self.unfinished = UnfinishedInputShare(of: unfinishedInput, maxLineBytes: configuration.intake.maxLineBytes.bytes)
        self.logger = logger
        self.maxLineBytes = configuration.intake.maxLineBytes.bytes
        self.reading = Reading(parser: IntakeLineParser(configuration: configuration))
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        handle(unwrapInboundIn(data), context: context)
    }

    /// Handles the lines of what was carried followed by `input`, up to `lineLimit` lines in this burst;
    /// carries the rest: the unfinished last line, or whole lines past the limit.
    private func handle(_ input: ByteBuffer, context: ChannelHandlerContext, lineLimit: Int = maxLinesPerBurst) {
        var input = input
        if burstStarted == nil { burstStarted = .now }
        // A carried unfinished line holds no newline: it is not searched again (a line arriving in small
        // pieces would otherwise be searched from its start at every piece, quadratic in its length).
        var newlineFree = 0
        if var earlier = carried {
            carried = nil
            newlineFree = carriedNewlineFree
            earlier.writeBuffer(&input)
            input = earlier
        }
        let (consumed, full) = input.withUnsafeReadableBytes { raw in
            Self.handleLines(
                in: raw, newlineFree: newlineFree, maxLines: lineLimit - reading.entries.count, maxLineBytes: maxLineBytes,
                capacity: writer.capacity, reading: &reading)
        }
        guard consumed >= 0, full || input.readableBytes - consumed <= maxLineBytes else {
            refuseUnfinishedLine(context: context) { [maxLineBytes] line in
                IntakeRejection(
                    .lineTooLong,
                    "line \(line) is longer than [intake] max_line_bytes (\(ByteSize(bytes: maxLineBytes))); closing the connection")
            }
            return
        }
        input.moveReaderIndex(forwardBy: consumed)
        // Everything carried counts: an unfinished line, or whole lines waiting for the next burst (which may
        // end in the start of another line, and sit in the storage of an earlier one).
        guard unfinished.resize(to: input.readableBytes) else {
            refuseUnfinishedLine(context: context) { [limit = unfinished.limit] line in
                IntakeRejection(
                    .busy,
                    "line \(line) is unfinished while the agent already holds \(ByteSize(bytes: limit)) of unfinished lines and request bodies from all connections, as much as it keeps; nothing of it was stored; closing the connection, retry"
                )
            }
            return
        }
        guard input.readableBytes > 0 else { return }
        if full {
            carried = input  // whole lines (and perhaps the start of another) wait as they are
            carriedNewlineFree = 0
        } else if consumed == 0 {
            carried = input  // all of it is one line still arriving: keep (and later grow) it as is
            carriedNewlineFree = input.readableBytes
        } else {
            // Keep only the unfinished line, not the whole read buffer it sits in.
            var line = context.channel.allocator.buffer(capacity: max(input.readableBytes * 2, 1024))
            line.writeBuffer(&input)
            carried = line
            carriedNewlineFree = line.readableBytes
        }
    }

    /// Handles up to `maxLines` finished lines in `raw`, whose first `newlineFree` bytes are known to hold
    /// no newline (they are not searched). Returns how many bytes the lines took (-1 if a line is longer
    /// than `maxLineBytes`; the lines before it are handled), and whether it stopped at `maxLines` with
    /// bytes left.
    private static func handleLines(
        in raw: UnsafeRawBufferPointer, newlineFree: Int, maxLines: Int, maxLineBytes: Int, capacity: SpoolCapacity,
        reading: inout Reading
    ) -> (consumed: Int, full: Bool) {
        guard let base = raw.baseAddress else { return (0, false) }
        var start = 0
        var lines = 0
        while start < raw.count {
            guard lines < maxLines else { return (start, true) }
            let from = max(start, newlineFree)
            guard let newline = memchr(base + from, Int32(UInt8(ascii: "\n")), raw.count - from) else { break }
            let end = base.distance(to: UnsafeRawPointer(newline))
            let lineEnd = end > start && raw[end - 1] == UInt8(ascii: "\r") ? end - 1 : end
            guard lineEnd - start <= maxLineBytes else { return (-1, false) }
            reading.handle(line: UnsafeRawBufferPointer(rebasing: raw[start..<lineEnd]), capacity: capacity)
            lines += 1
            start = end + 1
        }
        return (start, false)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        submitBurst(context: context)
        // Lines past the burst's limit go now if they may (not only at the channel's next read()).
        if linesWaiting { pump(context: context) }
        context.fireChannelReadComplete()
    }

    /// A line that cannot be kept until its newline (over `max_line_bytes`, or past the shared budget of
    /// unfinished input): answered after everything before it, then the connection closes (the rest of the
    /// line cannot be told apart from new requests).
    private func refuseUnfinishedLine(context: ChannelHandlerContext, _ rejection: (_ lineNumber: Int) -> IntakeRejection) {
        carried = nil
        unfinished.release()
        reading.refuseLine(rejection)
        submitBurst(context: context)
        beginClosing(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        unfinished.release()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("intake connection error", metadata: ["error": "\(error)"])
        submitBurst(context: context)
        beginClosing(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent, ChannelEvent.inputClosed:
            // Shutdown, or the client finished sending: answer what was read, then close. A line cut off
            // by the client's end of input is refused; one cut off by our shutdown gets no answer (the
            // client never finished it, and a 400 would tell it the record itself was bad).
            if !closing, linesWaiting {
                if event is ChannelShouldQuiesceEvent {
                    // Lines still waiting were read but not handled: like lines not read yet, nothing of
                    // them is stored, and they get no answer.
                    carried = nil
                } else {
                    // The client has sent everything: every line of it is answered.
                    handle(ByteBuffer(), context: context, lineLimit: .max)
                }
            }
            if !closing, event as? ChannelEvent == .inputClosed, let unfinished = carried, unfinished.readableBytes > 0 {
                carried = nil
                reading.refuseLine { line in
                    IntakeRejection(.invalidJSON, "the connection ended inside line \(line): every request must end with a newline")
                }
            }
            submitBurst(context: context)
            beginClosing(context: context)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if closing { return }
        pump(context: context)
    }

    /// While another burst may be read: handles the lines waiting from an earlier read, a burst at a time,
    /// then asks the socket for more. Stops with `readHeld` set when back-pressure says to wait.
    private func pump(context: ChannelHandlerContext) {
        readHeld = false  // a burst answered during the loop must not start another pump
        while !closing {
            guard mayRead(context: context) else {
                readHeld = true
                return
            }
            guard linesWaiting else {
                context.read()
                return
            }
            handle(ByteBuffer(), context: context)
            submitBurst(context: context)
        }
    }

    /// Whether another burst may be read now: few enough bursts await their commit, the socket takes our
    /// replies, and the shared budget has room (checked last: a refusal there registers a wake-up).
    private func mayRead(context: ChannelHandlerContext) -> Bool {
        outstanding.count < Self.maxOutstandingBatches && context.channel.isWritable && admittedByBudget(context: context)
    }

    /// Whether the shared budget has room for another burst; if not, this connection is woken on its
    /// event loop once it has.
    private func admittedByBudget(context: ChannelHandlerContext) -> Bool {
        if waitingForBudget { return false }
        let admitted = budget.admitOrWait {
            let loop = context.eventLoop
            let wake = NIOLoopBound((handler: self, context: context), eventLoop: loop)
            return { loop.execute { wake.value.handler.budgetHasRoom(context: wake.value.context) } }
        }
        waitingForBudget = !admitted
        return admitted
    }

    private func budgetHasRoom(context: ChannelHandlerContext) {
        waitingForBudget = false
        resumeReadingIfPossible(context: context)
    }

    // MARK: Batches and replies

    private func submitBurst(context: ChannelHandlerContext) {
        guard !reading.entries.isEmpty else { return }
        let started = burstStarted ?? .now
        burstStarted = nil
        let (batch, entries, ackBytes, awaited) = reading.takeBurst()
        AgentMetrics.linesReceived.increment(by: Int64(entries.count))
        // Entries are consecutive lines: beginClosing (after which lines are skipped) always follows a submit.
        let firstLine = reading.lineNumber - entries.count + 1
        let burst = Burst(
            entries: entries, ackBytes: ackBytes, firstLine: firstLine,
            outcome: batch.isEmpty ? .success(()) : nil, started: started)
        if !batch.isEmpty {
            let promise = context.eventLoop.makePromise(of: Void.self)
            let held = batch.allocatedBytes + entries.capacity * MemoryLayout<Entry>.stride + ackBytes.capacity
            budget.hold(held)
            // A burst without acks is awaited by nobody: it may wait a moment to share a commit (GroupCommit).
            writer.submit(batch, promise: promise, awaited: awaited)
            promise.futureResult.assumeIsolated().whenComplete { [self] result in
                budget.release(held)
                burst.outcome = result.mapError { IntakeRejection(submissionFailure: $0) }
                sendReplies(context: context)
            }
        }
        outstanding.append(burst)
        if burst.outcome != nil { sendReplies(context: context) }
    }

    private func sendReplies(context: ChannelHandlerContext) {
        // About 40 bytes per acknowledged line: size the buffer once instead of doubling it.
        let lines = outstanding.prefix { $0.outcome != nil }.reduce(0) { $0 + $1.entries.count }
        var buffer = context.channel.allocator.buffer(capacity: lines * 40)
        while let head = outstanding.first, let outcome = head.outcome {
            outstanding.removeFirst()
            Self.count(head.entries, outcome: outcome)
            AgentMetrics.ackLatency.recordInterval(since: head.started)
            head.ackBytes.withUnsafeBytes { acks in
                func bytes(_ ack: AckID) -> UnsafeRawBufferPointer? {
                    guard ack.length >= 0 else { return nil }
                    let start = Int(ack.offset)
                    return UnsafeRawBufferPointer(rebasing: acks[start..<start + Int(ack.length)])
                }
                for (offset, entry) in head.entries.enumerated() {
                    let line = head.firstLine + offset
                    switch (entry, outcome) {
                    case (.accepted(let ack, let records), .success):
                        IntakeReply.write(ack: bytes(ack), line: line, result: .success(Int(records)), to: &buffer)
                    case (.accepted(let ack, _), .failure(let rejection)), (.refused(let ack, let rejection), _):
                        IntakeReply.write(ack: bytes(ack), line: line, result: .failure(rejection), to: &buffer)
                        if ack.length < 0 { logRefusalWithoutAck(line: line, rejection) }
                    }
                }
            }
        }
        if buffer.readableBytes > 0 {
            lastReply = context.writeAndFlush(wrapOutboundOut(buffer))
        }
        if closing, outstanding.isEmpty {
            closeAfterReplies(context: context)
        } else {
            resumeReadingIfPossible(context: context)
        }
    }

    /// One debug line a second, for all connections, about lines refused that carried no ack id: their
    /// writers often do not read replies, so the log is where an operator can see why records went missing.
    private static let refusalLog = LogRateLimiter(interval: .seconds(1))

    private func logRefusalWithoutAck(line: Int, _ rejection: IntakeRejection) {
        guard logger.logLevel <= .debug, let heldBack = Self.refusalLog.admit() else { return }
        logger.debug(
            "refused an intake line sent without an ack id",
            metadata: [
                "line": "\(line)", "status": "\(rejection.status)", "code": "\(rejection.code)", "error": "\(rejection.message)",
                "similar_lines_not_logged": "\(heldBack)",
            ])
    }

    /// Metrics for one answered burst: records spooled, refusals by reason.
    private static func count(_ entries: [Entry], outcome: Result<Void, IntakeRejection>) {
        var spooled = 0
        var refused: [IntakeRejection.Code: Int] = [:]
        for entry in entries {
            switch (entry, outcome) {
            case (.accepted(_, let records), .success): spooled += Int(records)
            case (.accepted, .failure(let rejection)): refused[rejection.code, default: 0] += 1
            case (.refused(_, let rejection), _): refused[rejection.code, default: 0] += 1
            }
        }
        if spooled > 0 { AgentMetrics.recordsSpooled.increment(by: Int64(spooled)) }
        for (code, count) in refused { AgentMetrics.rejected(code).increment(by: Int64(count)) }
    }

    private func beginClosing(context: ChannelHandlerContext) {
        closing = true
        if outstanding.isEmpty { closeAfterReplies(context: context) }
    }

    /// Closes the connection once every reply written has reached the socket. Closing at once would fail
    /// the writes still queued in the channel (the socket's buffer full: a writer that reads its replies
    /// only after sending everything), and those are acks of records already durable. A writer that never
    /// reads keeps its connection until the daemon's stop closes it.
    private func closeAfterReplies(context: ChannelHandlerContext) {
        guard let lastReply else { return context.close(promise: nil) }
        lastReply.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        guard readHeld, !closing else { return }
        pump(context: context)
    }
}

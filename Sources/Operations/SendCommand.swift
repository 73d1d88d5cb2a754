import ArgumentParser
import Core
import Daemon
import FoundationEssentials
import Glibc
import Intake

/// `definite-agent send`: sends NDJSON records through the agent's line socket, with acknowledgements.
///
/// Input lines go in requests of many lines (`"data":[…]`), pipelined on one connection, each with the
/// number of its first line as the ack id. Each line is first checked by the agent's own rules for a row,
/// so that the agent takes or refuses a request for reasons common to its lines (spool full, storage
/// failed); when it still refuses one for a single line, or as too long, its lines go again in smaller
/// requests, down to one line a request, so every refusal names its line. ``SendLedger`` keeps the books;
/// this command does the I/O.
///
/// - Important: Every input line is accounted for: accepted, rejected (with its reason), or — only when
///   the agent stays unreachable — counted as not sent or not confirmed. A lost connection is re-made and
///   what was not acknowledged is sent again; while the agent's spool is full (507) the refused lines wait
///   and go again, unless `--no-wait`.
struct SendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send NDJSON records to the running agent and wait until each is durable.",
        discussion: """
            Reads one JSON object per line from FILE (or standard input). Prints "accepted N, rejected M"; \
            each rejected line's number and reason go to stderr. When the agent closes the connection (a line \
            over [intake] max_line_bytes, a restart), send reconnects and sends again what was not acknowledged. \
            While the agent's spool is full (507) it waits and retries with backoff, saying so once; with \
            --no-wait those lines count as rejected, summed up in one line. Exits 0 only if every record is \
            durable; 1 if some were rejected; 64 on bad options; 66 if FILE cannot be read; 69 if the agent \
            cannot be reached (for a minute, once connected). Ctrl-C (SIGINT) or SIGTERM stops sending, reads \
            the replies already due for up to 2 s, prints the summary with the line to send again from, and \
            ends by that signal.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: "Target table, \"namespace.table\" or \"LAKE.namespace.table\" (default: [intake] default_table).")
    var table: String?

    @Option(name: .long, help: "append or merge (default: the table's [[table]] mode, else append; merge with --primary-key).")
    var mode: AgentConfiguration.Mode?

    @Option(name: .long, help: "The merge key: exactly one column. Implies --mode merge.")
    var primaryKey: String?

    @Option(name: .long, help: ArgumentHelp("The agent's socket (default: [intake] socket from the configuration).", valueName: "path"))
    var socket: String?

    @Flag(
        name: .customLong("no-wait"),
        help: "When the agent's spool is full (507), count those lines as rejected instead of waiting for room.")
    var noWait = false

    @Argument(help: "An NDJSON file; standard input when omitted or \"-\".")
    var file: String?

    func validate() throws {
        if let table, let problem = TableName.problem(with: table) { throw ValidationError(problem) }
        if let primaryKey {
            if primaryKey.contains(",") || primaryKey.isEmpty {
                throw ValidationError("--primary-key must name exactly one column (the Stream API does not support composite keys)")
            }
            if mode == .append { throw ValidationError("--primary-key applies only to merge: drop --mode append, or drop --primary-key") }
        }
        if mode == .merge, primaryKey == nil { throw ValidationError("--mode merge needs --primary-key COLUMN") }
    }

    func run() throws {
        let configuration = socket == nil || table == nil ? try global.loadConfiguration() : nil
        guard let table = table ?? configuration?.0.intake.defaultTable else {
            printError("error: no --table given and \(configuration?.source ?? "the configuration") sets no [intake] default_table")
            throw ExitCode(64)  // EX_USAGE
        }
        let path = socket ?? configuration?.0.intake.socket ?? ""
        var config = "{\"table\":\(JSONCompactor.quote(table))"
        if let primaryKey {
            config += ",\"mode\":\"merge\",\"primary_key\":[\(JSONCompactor.quote(primaryKey))]"
        } else if let mode {
            config += ",\"mode\":\(JSONCompactor.quote(mode.rawValue))"
        }
        config += "}"
        // The merge key every line must carry: given, or the table's [[table]] default as far as send
        // knows the agent's configuration (the agent has the last word: see SendLedger).
        var mergeKey = primaryKey
        if mode == nil, mergeKey == nil, let defaults = configuration?.0.tableDefaults(for: table), defaults.mode == .merge {
            mergeKey = defaults.primaryKey
        }
        // Requests of several lines stay within the agent's max_line_bytes when send knows it (the ledger
        // learns it otherwise).
        var requestBytes = SendSession.requestBytes
        if let limit = configuration?.0.intake.maxLineBytes { requestBytes = min(requestBytes, limit.bytes) }

        var input = STDIN_FILENO
        if let file, file != "-" {
            input = open(file, O_RDONLY | O_CLOEXEC)
            guard input >= 0 else {
                printError("error: cannot read \(file): \(SystemCallError().description)")
                throw ExitCode(66)  // EX_NOINPUT
            }
        }
        defer { if input != STDIN_FILENO { close(input) } }
        let socket: AgentSocket
        do {
            socket = try AgentSocket(path: path)
        } catch {
            printError("error: cannot connect to the agent at \(path): \(error) (is it running? see --socket)")
            throw ExitCode(69)  // EX_UNAVAILABLE
        }
        let ledger = SendLedger(waitsForRoom: !noWait, format: SendRequestFormat(config: config), maxRequestBytes: requestBytes)
        var session = SendSession(
            path: path, socket: socket, input: LineReader(fd: input), ledger: ledger,
            mergeKey: mergeKey)
        // From here on Ctrl-C ends the session, not the process: the summary says what the agent confirmed.
        CommandInterruption.catchSignals()
        let outcome = session.run()
        try Self.report(outcome, input: file.flatMap { $0 == "-" ? nil : $0 })
    }

    /// Prints the summary and turns the outcome into the exit code (or, after SIGINT or SIGTERM, ends the
    /// process by that signal). `input` is the file read, `nil` for standard input.
    static func report(_ outcome: SendSession.Outcome, input: String?) throws {
        let totals = outcome.totals
        var summary = "accepted \(totals.acceptedRecords), rejected \(totals.rejectedLines)"
        if outcome.unconfirmed > 0 { summary += ", not confirmed \(outcome.unconfirmed)" }
        if outcome.unsent > 0 { summary += ", not sent \(outcome.unsent)" }
        print(summary)
        if let first = totals.refusedForRoom.first, let last = totals.refusedForRoom.last {
            printError(
                "\(totals.refusedForRoom.count) lines refused because the agent's spool is full (507 spool_full) or it holds as much unfinished input as it keeps (503 busy), lines \(first)–\(last); send them again later, or leave out --no-wait to wait for room"
            )
        }
        if totals.waitedForRoom > 0 {
            let times = totals.roomRetries == 1 ? "once" : "\(totals.roomRetries) times"
            printError("\(totals.waitedForRoom) lines waited for room in the agent's spool (sent again \(times))")
        }
        if let signal = outcome.interruptedBy, let stop = outcome.stop {
            printError("interrupted by \(CommandInterruption.name(of: signal)); " + stop.description(input: input))
            CommandInterruption.end(by: signal)
        }
        if let failure = outcome.failure {
            printError("error: \(failure)")
            if let stop = outcome.stop { printError("error: " + stop.description(input: input)) }
            throw ExitCode(outcome.agentUnreachable ? 69 : 1)
        }
        if totals.rejectedLines > 0 { throw ExitCode(1) }
    }
}

/// One run of `send`: the input, the connection (re-made when lost) and the ledger, driven by one loop.
///
/// Input lines go in requests of up to ``requestBytes`` (``SendRequestFormat``): the agent then parses one
/// `config` and writes one reply per request instead of per line, and `send` reads and checks each line
/// where it lies in a large read buffer. A request is sent as soon as the input has nothing more ready, so
/// lines written slowly to standard input do not wait for others.
struct SendSession {
    /// How it ended.
    struct Outcome {
        var totals: SendLedger.Totals
        /// Lines handed to the ledger and never answered for good.
        var unconfirmed = 0
        /// Input lines never read because the session gave up.
        var unsent = 0
        /// Why the session gave up before the end of the input, if it did.
        var failure: String?
        var agentUnreachable = false
        /// The signal (SIGINT, SIGTERM) that stopped the session, if one did.
        var interruptedBy: Int32?
        /// Where the input stands, when the session stopped before its end (a signal, or giving up).
        var stop: Stop?
    }

    /// Where a session that stopped early left the input, and the line to send it again from.
    struct Stop: Equatable {
        /// The last input line read (0: none).
        var lastLineRead: Int
        /// The first line handed over and not answered for good; every line before it was answered.
        var firstUnconfirmedLine: Int?
        /// Lines handed over and not answered for good.
        var unconfirmed: Int
        /// Of those, the lines the agent refused for room (507, 503 busy) and that wait to go again: not stored.
        var waitingForRoom: Int

        /// The line to send the input again from: nothing before it is left unanswered.
        var resumeLine: Int { firstUnconfirmedLine ?? lastLineRead + 1 }

        /// What stderr says: what was read, what may be stored, and where to go on from (`input`: the file
        /// read, `nil` for standard input).
        func description(input: String?) -> String {
            var text = "stopped after reading \(lastLineRead) lines"
            if unconfirmed > waitingForRoom {
                text +=
                    "; \(unconfirmed - waitingForRoom) lines from line \(resumeLine) on were sent but not confirmed: they may or may not be stored"
            }
            if waitingForRoom > 0 {
                text += "; \(waitingForRoom) lines the agent refused for room (507 or 503 busy) were not stored"
            }
            guard resumeLine > 1 else { return text + "; no line was answered: to finish, send the whole input again" }
            return text
                + "; every line before line \(resumeLine) was answered (the counts above); to finish, send the input again from line \(resumeLine) (tail -n +\(resumeLine) \(input.map(Self.shellWord) ?? "FILE"))"
        }

        /// `path` as one word of a shell command: as it is when plain, else in single quotes.
        static func shellWord(_ path: String) -> String {
            let plain =
                !path.isEmpty
                && path.utf8.allSatisfy { byte in
                    switch byte {
                    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                        UInt8(ascii: "0")...UInt8(ascii: "9"):
                        true
                    case UInt8(ascii: "/"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: ":"),
                        UInt8(ascii: ","), UInt8(ascii: "="), UInt8(ascii: "@"):
                        true
                    default: false
                    }
                }
            return plain ? path : "'" + path.replacing("'", with: #"'\''"#) + "'"
        }
    }

    /// A lost connection is made again for this long before giving up.
    static let reconnectPatience = Duration.seconds(60)
    /// How large a request of several lines is made (and at most `[intake] max_line_bytes`).
    static let requestBytes = 64 << 10
    /// At most this many lines in one request (the Stream API takes 50,000 rows a request).
    static let requestLines = 2_000
    /// Requests are written while less than this is waiting to be written.
    static let outputBytes = 256 << 10
    /// How long replies may be due without a byte from the agent before send says it is still waiting.
    static let replyPatience = Duration.seconds(20)
    /// After SIGINT or SIGTERM, how long the replies already due are read (a second signal stops at once),
    /// and how long the agent may stay quiet meanwhile.
    static let interruptedPatience = Duration.seconds(2)
    static let interruptedQuiet = Duration.milliseconds(500)

    let path: String
    private var socket: AgentSocket
    private var input: LineReader
    private var ledger: SendLedger
    /// The merge key every line must carry, when send knows the table merges.
    private let mergeKey: String?
    private var lineNumber = 0
    private var inputEnded = false
    private var toldAboutWaiting = false
    /// Replies read on the current connection, and connections lost in a row without one (since when).
    private var repliesOnConnection = 0
    /// Replies read in the whole session that were the agent's.
    private var repliesUnderstood = 0
    private var fruitlessLosses = 0
    private var fruitlessSince: ContinuousClock.Instant?
    private var toldAboutSplitting = false
    /// When the agent last sent a byte, or when replies became due after none were: a silence is said once.
    private var heardAt = ContinuousClock.now
    private var toldAboutSilence = false

    init(path: String, socket: AgentSocket, input: LineReader, ledger: SendLedger, mergeKey: String?) {
        self.path = path
        self.socket = socket
        self.input = input
        self.ledger = ledger
        self.mergeKey = mergeKey
    }

    mutating func run() -> Outcome {
        while true {
            switch exchange() {
            case .finished:
                return Outcome(totals: ledger.totals)
            case .interrupted(let signal):
                return interrupted(by: signal)
            case .outOfStep(let problem):
                // What answers at the path is not the agent when its very first reply makes no sense: 69, as
                // for a socket nobody listens on, not 1 ("some records rejected").
                return giveUp("\(problem); stopping", unreachable: repliesUnderstood == 0)
            case .connectionLost:
                // A connection lost before any reply (a program that accepts and closes, an agent that fails
                // every start) is made again after a pause that doubles, and given up after the patience: it
                // once spun at full speed, hundreds of thousands of connections, forever.
                if repliesOnConnection > 0 {
                    fruitlessSince = nil
                } else {
                    let since = fruitlessSince ?? .now
                    fruitlessSince = since
                    guard ContinuousClock.now - since < Self.reconnectPatience else {
                        return giveUp(
                            "the agent at \(path) closed every connection without an answer for \(Self.reconnectPatience)",
                            unreachable: true)
                    }
                    Self.pause(min(.milliseconds(100) * Int(1 << min(fruitlessLosses, 6)), .seconds(5)))
                    if let signal = CommandInterruption.signal { return interrupted(by: signal) }
                }
                fruitlessLosses = repliesOnConnection > 0 ? 0 : fruitlessLosses + 1
                repliesOnConnection = 0
                switch ledger.connectionLost() {
                case .afterLineTooLong:
                    break  // nothing after the long line was read: sending it again stores it once
                case .unexpected(let unanswered) where unanswered > 0 && fruitlessLosses <= 1:
                    // Said once for connections lost one after another without an answer.
                    printError(
                        "warning: the connection to the agent ended with \(unanswered) lines unanswered; reconnecting to send them again (any the agent had stored before it went are stored twice)"
                    )
                case .unexpected:
                    break
                }
                guard let socket = Self.reconnect(path: path) else {
                    if let signal = CommandInterruption.signal { return interrupted(by: signal) }
                    return giveUp("cannot reach the agent at \(path) again after \(Self.reconnectPatience)", unreachable: true)
                }
                self.socket = socket
            }
        }
    }

    private enum Ending {
        case finished
        case connectionLost
        case outOfStep(String)
        case interrupted(Int32)
    }

    /// Writes requests and reads replies on the current connection until the input is done and every line
    /// settled, or the connection ends.
    private mutating func exchange() -> Ending {
        var output: [UInt8] = []
        var written = 0
        var replies: [UInt8] = []
        while true {
            if let signal = CommandInterruption.signal {
                // Nothing more is written (a request cut short is not a line the agent stores).
                readRepliesAfterInterruption(&replies)
                return .interrupted(signal)
            }
            if written > 0, written >= output.count / 2 {
                // What was written goes; what was not moves to the front (at most as much as went).
                output.removeSubrange(..<written)
                written = 0
            }
            while output.count - written < Self.outputBytes, ledger.mayWrite {
                // Fresh lines are read before the ledger is asked: reading may refuse lines locally. The
                // input is waited for only when nothing else is left to write and no reply is due; with
                // replies due it is waited for together with them (below), so that a connection the agent
                // closed is noticed while the input is quiet.
                var fresh =
                    ledger.hasLinesToSendAgain ? nil : readRequest(mayBlock: written == output.count && ledger.isSettled)
                guard let request = ledger.next(fresh: { fresh.take() }) else { break }
                output.append(contentsOf: request.bytes)
            }
            if written == output.count, inputEnded, ledger.isSettled { return .finished }
            if ledger.mayRetryRoomAfterWaiting {
                Self.pause(ledger.roomWait)
                // Stopped meanwhile: the lines stay counted as waiting for room (not stored).
                if CommandInterruption.signal == nil { ledger.retryWaitingLines() }
                continue
            }
            let waitsForInput = written == output.count && ledger.mayWrite && !inputEnded && !ledger.hasLinesToSendAgain
            let ready = socket.wait(
                writing: written < output.count, input: waitsForInput ? input.fd : nil, interrupt: CommandInterruption.descriptor,
                timeout: .seconds(1))
            if ready.writable {
                guard let n = socket.send(output[written...]) else { return readRepliesLeft(&replies) }
                written += n
            }
            if ready.readable {
                let received = socket.receive(into: &replies)
                if let problem = handleReplies(in: &replies) { return .outOfStep(problem) }
                if case .closed = received { return .connectionLost }
                if case .bytes = received { heardAt = .now }
            }
            reportSilence()
        }
    }

    /// Says once on stderr that the agent has not answered for ``replyPatience`` while lines wait for its
    /// replies (an agent that stopped reading or answering: the lines may still be stored, so send keeps
    /// waiting), and again after it answered and fell silent once more.
    private mutating func reportSilence() {
        guard ledger.awaitsReplies else {
            heardAt = .now
            toldAboutSilence = false
            return
        }
        let quiet = ContinuousClock.now - heardAt
        if quiet < Self.replyPatience {
            toldAboutSilence = false
        } else if !toldAboutSilence {
            toldAboutSilence = true
            printError(
                "warning: no reply from the agent at \(path) for \(Int(quiet.components.seconds)) s with \(ledger.unanswered) lines waiting for one; still waiting (Ctrl-C stops: lines not confirmed may or may not be stored)"
            )
        }
    }

    /// The agent closed the connection while requests were being written. The replies it sent before it
    /// went are read first: the acks of lines it stored, and the refusal that made it close (a line too
    /// long, `busy`). Without them every line in flight went again, and those already stored were stored
    /// twice (once per reconnection: seven times behind seven long lines). Reading stops at the end of
    /// the connection, or after ``repliesLeftPatience`` without a byte.
    private mutating func readRepliesLeft(_ replies: inout [UInt8]) -> Ending {
        var quietSince = ContinuousClock.now
        while ContinuousClock.now - quietSince < Self.repliesLeftPatience {
            guard socket.wait(writing: false, interrupt: CommandInterruption.descriptor, timeout: Self.repliesLeftPatience).readable else {
                if CommandInterruption.signal != nil { return .connectionLost }
                continue
            }
            let received = socket.receive(into: &replies)
            if let problem = handleReplies(in: &replies) { return .outOfStep(problem) }
            switch received {
            case .bytes: quietSince = .now
            case .wouldBlock: continue
            case .closed: return .connectionLost
            }
        }
        return .connectionLost
    }

    /// How long replies are waited for on a connection that refused a write (the agent closes it at once).
    static let repliesLeftPatience = Duration.seconds(5)

    /// After SIGINT or SIGTERM: the replies to lines already handed over are read for up to
    /// ``interruptedPatience`` (until the agent is quiet for ``interruptedQuiet``, or a second signal), so
    /// that the summary counts every line the agent answered.
    private mutating func readRepliesAfterInterruption(_ replies: inout [UInt8]) {
        let deadline = ContinuousClock.now + Self.interruptedPatience
        var heard = ContinuousClock.now
        while ledger.awaitsReplies, CommandInterruption.count < 2, ContinuousClock.now < deadline,
            ContinuousClock.now - heard < Self.interruptedQuiet
        {
            guard socket.wait(writing: false, timeout: .milliseconds(100)).readable else { continue }
            let received = socket.receive(into: &replies)
            if handleReplies(in: &replies) != nil { return }
            switch received {
            case .bytes: heard = .now
            case .wouldBlock: continue
            case .closed: return
            }
        }
    }

    private func interrupted(by signal: Int32) -> Outcome {
        Outcome(totals: ledger.totals, unconfirmed: ledger.unconfirmed, interruptedBy: signal, stop: stop)
    }

    /// Where the input stands now.
    private var stop: Stop {
        Stop(
            lastLineRead: lineNumber, firstUnconfirmedLine: ledger.firstUnconfirmedLine, unconfirmed: ledger.unconfirmed,
            waitingForRoom: ledger.waitingForRoom)
    }

    /// Handles every complete reply line in `buffer`; returns a problem that ends the session, if any.
    private mutating func handleReplies(in buffer: inout [UInt8]) -> String? {
        var start = 0
        defer { buffer.removeFirst(start) }
        while let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer[start..<newline]
            start = newline + 1
            guard let reply = Self.reply(line) else {
                let shown = String(decoding: line.prefix(200), as: UTF8.self)
                if repliesUnderstood == 0 {
                    return "what answers at \(path) is not the agent (is it the agent's socket? see --socket); it said: \(shown)"
                }
                return "the agent sent a reply send does not understand: \(shown)"
            }
            repliesOnConnection += 1
            repliesUnderstood += 1
            switch ledger.receive(reply) {
            case .accepted:
                break
            case .rejected(let lines, let status, let code, let message):
                // Lines refused for room are summed up in one line at the end.
                guard status != 507, code != IntakeRejection.Code.busy.rawValue else { break }
                for line in lines { printError("line \(line): \(status): \(message)") }
            case .waitingForRoom:
                if !toldAboutWaiting {
                    toldAboutWaiting = true
                    printError(
                        "the agent's spool is full (507 spool_full; or 503 busy: it holds as much unfinished input as it keeps): waiting for room and sending those lines again, with backoff (--no-wait: count them as rejected instead)"
                    )
                }
            case .split(let line, let lines, let code):
                if code != IntakeRejection.Code.lineTooLong.rawValue, !toldAboutSplitting {
                    toldAboutSplitting = true
                    printError(
                        "warning: the agent refused the \(lines) lines from line \(line) on for one of them (\(code)), which send's own check let through; sending every line alone from here on, each with its own answer (lines already sent behind these may be stored before them)"
                    )
                }
            case .outOfStep(let problem):
                return problem
            }
        }
        return nil
    }

    /// The next request of fresh input lines: as many as fit the ledger's bounds and are ready without
    /// waiting (the first is waited for when `mayBlock`). Lines that cannot be one record are refused here
    /// and skipped.
    private mutating func readRequest(mayBlock: Bool) -> SendLedger.Request? {
        let maxBytes = ledger.maxRequestBytes
        let maxLines = ledger.batches ? Self.requestLines : 1
        let mergeKey = mergeKey
        var builder: SendRequestFormat.Builder?
        var lines = 0
        while !inputEnded, lines < maxLines {
            var full = false
            let next = input.next(blocking: mayBlock && builder == nil, interrupt: CommandInterruption.descriptor) { raw -> Bool in
                var line = raw
                if line.last == UInt8(ascii: "\r") { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
                if let builder, builder.count + line.count + 2 > maxBytes {
                    full = true
                    return false  // the next request's first line
                }
                lineNumber += 1
                if lineNumber == 1, line.starts(with: [0xEF, 0xBB, 0xBF]) {
                    // A UTF-8 byte order mark before the first line (an editor's, on Windows) is not part of it.
                    line = UnsafeRawBufferPointer(rebasing: line.dropFirst(3))
                }
                if line.first.map({ $0 == 0x20 || $0 == 0x09 }) ?? true, line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return true }
                if let problem = SendLineCheck.problem(line, mergeKey: mergeKey) {
                    ledger.rejectLocally()
                    printError("line \(lineNumber): \(problem.status): \(problem.message)")
                    return true
                }
                if builder == nil {
                    builder = SendRequestFormat.Builder(
                        format: ledger.format, firstLine: lineNumber,
                        capacity: min(maxBytes, Self.requestBytes) + 64, buffer: ledger.spareBuffer())
                }
                builder!.append(line: lineNumber, record: line)
                lines += 1
                return true
            }
            switch next {
            case .line: if full { return builder?.finish() }
            case .wouldBlock: return builder?.finish()
            case .end: inputEnded = true
            }
        }
        return builder?.finish()
    }

    private mutating func giveUp(_ failure: String, unreachable: Bool) -> Outcome {
        let stop = stop  // before the rest of the input is read (and counted as not sent)
        var unsent = 0
        while let request = readRequest(mayBlock: true) { unsent += request.rows.count }
        return Outcome(
            totals: ledger.totals, unconfirmed: ledger.unconfirmed, unsent: unsent, failure: failure, agentUnreachable: unreachable,
            stop: stop)
    }

    /// Connects again, waiting 0.1 s, then twice as long each time up to 5 s, for ``reconnectPatience``.
    private static func reconnect(path: String) -> AgentSocket? {
        let deadline = ContinuousClock.now + reconnectPatience
        var pause = Duration.milliseconds(100)
        while CommandInterruption.signal == nil {
            if let socket = try? AgentSocket(path: path) { return socket }
            guard ContinuousClock.now + pause < deadline else { return nil }
            Self.pause(pause)
            pause = min(pause * 2, .seconds(5))
        }
        return nil
    }

    /// Waits `duration`, or less when SIGINT or SIGTERM comes.
    private static func pause(_ duration: Duration) {
        let deadline = ContinuousClock.now + duration
        while CommandInterruption.signal == nil, case let left = deadline - .now, left > .zero {
            var entry = pollfd(fd: CommandInterruption.descriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1))
        }
    }

    /// A reply line as the ledger reads it; `nil` when it is not one.
    static func reply(_ line: ArraySlice<UInt8>) -> SendLedger.Reply? {
        guard let value = try? line.withUnsafeBytes({ try JSONValue.parse($0) }), case .bool(let ok)? = value["ok"] else { return nil }
        var ack: String?
        if case .string(let text)? = value["ack"] { ack = text }
        if ok {
            guard let ack, case .number(let records)? = value["accepted"], let count = Int(records) else { return nil }
            return .accepted(ack: ack, records: count)
        }
        guard case .number(let statusText)? = value["status"], let status = Int(statusText) else { return nil }
        var code = ""
        if case .string(let text)? = value["code"] { code = text }
        var message = ""
        if case .string(let text)? = value["error"] { message = text }
        return .refused(ack: ack, status: status, code: code, message: message)
    }
}

/// `--mode append|merge`, listed in `--help` and completions.
extension AgentConfiguration.Mode: ExpressibleByArgument {}

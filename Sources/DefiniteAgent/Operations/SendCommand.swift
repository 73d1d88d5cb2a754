import ArgumentParser
import FoundationEssentials
import Glibc

/// `definite-agent send`: sends NDJSON records through the agent's line socket, with acknowledgements.
///
/// Each input line goes as one request with its line number as the ack id, pipelined on one connection,
/// so each refusal names its line. ``SendLedger`` keeps the books; this command does the I/O.
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
            cannot be reached (for a minute, once connected).
            """)

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: "Target table, \"namespace.table\" or \"LAKE.namespace.table\" (default: [intake] default_table).")
    var table: String?

    @Option(name: .long, help: "append or merge (default: the table's [[table]] mode, else append; merge with --primary-key).")
    var mode: String?

    @Option(name: .long, help: "The merge key: exactly one column. Implies --mode merge.")
    var primaryKey: String?

    @Option(name: .long, help: ArgumentHelp("The agent's socket (default: [intake] socket from the configuration).", valueName: "path"))
    var socket: String?

    @Flag(name: .customLong("no-wait"), help: "When the agent's spool is full (507), count those lines as rejected instead of waiting for room.")
    var noWait = false

    @Argument(help: "An NDJSON file; standard input when omitted or \"-\".")
    var file: String?

    func validate() throws {
        if let table, let problem = TableName.problem(with: table) { throw ValidationError(problem) }
        if let mode, AgentConfiguration.Mode(rawValue: mode) == nil { throw ValidationError("--mode must be append or merge") }
        if let primaryKey {
            if primaryKey.contains(",") || primaryKey.isEmpty {
                throw ValidationError("--primary-key must name exactly one column (the Stream API does not support composite keys)")
            }
            if mode == "append" { throw ValidationError("--primary-key applies only to merge: drop --mode append, or drop --primary-key") }
        }
        if mode == "merge", primaryKey == nil { throw ValidationError("--mode merge needs --primary-key COLUMN") }
    }

    func run() throws {
        let configuration = socket == nil || table == nil ? try global.loadConfiguration() : nil
        guard let table = table ?? configuration?.0.intake.defaultTable else {
            printError("error: no --table given and \(configuration?.source ?? "the configuration") sets no [intake] default_table")
            throw ExitCode(64)  // EX_USAGE
        }
        let path = socket ?? configuration?.0.intake.socket ?? ""
        var config = "{\"table\":\(JSONCompactor.quote(table))"
        if let primaryKey { config += ",\"mode\":\"merge\",\"primary_key\":[\(JSONCompactor.quote(primaryKey))]" } else if let mode { config += ",\"mode\":\(JSONCompactor.quote(mode))" }
        config += "}"

        var input = STDIN_FILENO
        if let file, file != "-" {
            input = open(file, O_RDONLY | O_CLOEXEC)
            guard input >= 0 else {
                printError("error: cannot read \(file): \(String(cString: strerror(errno)))")
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
        var session = SendSession(path: path, socket: socket, input: LineReader(fd: input),
                                  prefix: Array(",\"config\":\(config),\"data\":".utf8), waitsForRoom: !noWait)
        let outcome = session.run()
        try Self.report(outcome)
    }

    /// Prints the summary and turns the outcome into the exit code.
    static func report(_ outcome: SendSession.Outcome) throws {
        let totals = outcome.totals
        var summary = "accepted \(totals.acceptedRecords), rejected \(totals.rejectedLines)"
        if outcome.unconfirmed > 0 { summary += ", not confirmed \(outcome.unconfirmed)" }
        if outcome.unsent > 0 { summary += ", not sent \(outcome.unsent)" }
        print(summary)
        if let first = totals.refusedForRoom.first, let last = totals.refusedForRoom.last {
            printError("\(totals.refusedForRoom.count) lines refused because the agent's spool is full (507 spool_full), lines \(first)–\(last); send them again later, or leave out --no-wait to wait for room")
        }
        if totals.waitedForRoom > 0 {
            printError("\(totals.waitedForRoom) lines waited for room in the agent's spool (sent again \(totals.roomRetries) times)")
        }
        if let failure = outcome.failure {
            printError("error: \(failure)")
            if outcome.unconfirmed > 0 {
                printError("error: \(outcome.unconfirmed) lines were sent but not confirmed; they may or may not be spooled")
            }
            throw ExitCode(outcome.agentUnreachable ? 69 : 1)
        }
        if totals.rejectedLines > 0 { throw ExitCode(1) }
    }
}

/// One run of `send`: the input, the connection (re-made when lost) and the ledger, driven by one loop.
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
    }

    /// A lost connection is made again for this long before giving up.
    static let reconnectPatience = Duration.seconds(60)

    let path: String
    private var socket: AgentSocket
    private var input: LineReader
    private let prefix: [UInt8]
    private var ledger: SendLedger
    private var lineNumber = 0
    private var inputEnded = false
    private var toldAboutWaiting = false

    init(path: String, socket: AgentSocket, input: LineReader, prefix: [UInt8], waitsForRoom: Bool) {
        self.path = path
        self.socket = socket
        self.input = input
        self.prefix = prefix
        self.ledger = SendLedger(waitsForRoom: waitsForRoom)
    }

    mutating func run() -> Outcome {
        while true {
            switch exchange() {
            case .finished:
                return Outcome(totals: ledger.totals)
            case .outOfStep(let problem):
                return giveUp("\(problem); stopping", unreachable: false)
            case .connectionLost:
                switch ledger.connectionLost() {
                case .afterLineTooLong:
                    break  // nothing after the long line was read: sending it again stores it once
                case .unexpected(let unanswered) where unanswered > 0:
                    printError("warning: the connection to the agent ended with \(unanswered) lines unanswered; reconnecting to send them again (any the agent had stored before it went are stored twice)")
                case .unexpected:
                    break
                }
                guard let socket = Self.reconnect(path: path) else {
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
    }

    /// Writes requests and reads replies on the current connection until the input is done and every line
    /// settled, or the connection ends.
    private mutating func exchange() -> Ending {
        var output: [UInt8] = []
        var written = 0
        var replies: [UInt8] = []
        while true {
            while output.count - written < 1 << 16, ledger.mayWrite {
                // The next input line is read before the ledger is asked: reading may refuse lines locally.
                var fresh = ledger.hasLinesToSendAgain ? nil : readRequest()
                guard let request = ledger.next(fresh: { fresh.take() }) else { break }
                output.append(contentsOf: request.bytes)
            }
            if written == output.count, inputEnded, ledger.isSettled { return .finished }
            if ledger.mayRetryRoomAfterWaiting {
                Self.pause(ledger.roomWait)
                ledger.retryWaitingLines()
                continue
            }
            let ready = socket.wait(writing: written < output.count, timeout: .seconds(1))
            if ready.writable {
                guard let n = socket.send(output[written...]) else { return .connectionLost }
                written += n
                if written == output.count {
                    output.removeAll(keepingCapacity: true)
                    written = 0
                }
            }
            if ready.readable {
                let received = socket.receive(into: &replies)
                if let problem = handleReplies(in: &replies) { return .outOfStep(problem) }
                if case .closed = received { return .connectionLost }
            }
        }
    }

    /// Handles every complete reply line in `buffer`; returns a problem that ends the session, if any.
    private mutating func handleReplies(in buffer: inout [UInt8]) -> String? {
        var start = 0
        defer { buffer.removeFirst(start) }
        while let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer[start..<newline]
            start = newline + 1
            guard let reply = Self.reply(line) else {
                return "the agent sent a reply send does not understand: \(String(decoding: line.prefix(200), as: UTF8.self))"
            }
            switch ledger.receive(reply) {
            case .accepted:
                break
            case .rejected(let line, let status, let code, let message):
                if status != 507 || code != IntakeRejection.Code.spoolFull.rawValue { printError("line \(line): \(status): \(message)") }
            case .waitingForRoom:
                if !toldAboutWaiting {
                    toldAboutWaiting = true
                    printError("the agent's spool is full (507 spool_full): waiting for room and sending those lines again, with backoff (--no-wait: count them as rejected instead)")
                }
            case .outOfStep(let problem):
                return problem
            }
        }
        return nil
    }

    /// The next input line as a request; lines that cannot be one record are refused here and skipped.
    private mutating func readRequest() -> SendLedger.Request? {
        while !inputEnded {
            guard var line = input.next() else {
                inputEnded = true
                return nil
            }
            lineNumber += 1
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            if let problem = Self.localProblem(line) {
                ledger.rejectLocally()
                printError("line \(lineNumber): \(problem.status): \(problem.message)")
                continue
            }
            var bytes = Array("{\"ack\":\"\(lineNumber)\"".utf8)
            bytes.reserveCapacity(bytes.count + prefix.count + line.count + 2)
            bytes.append(contentsOf: prefix)
            bytes.append(contentsOf: line)
            bytes.append(contentsOf: [UInt8(ascii: "}"), UInt8(ascii: "\n")])
            return SendLedger.Request(line: lineNumber, bytes: bytes)
        }
        return nil
    }

    private mutating func giveUp(_ failure: String, unreachable: Bool) -> Outcome {
        var unsent = 0
        while readRequest() != nil { unsent += 1 }
        return Outcome(totals: ledger.totals, unconfirmed: ledger.unconfirmed, unsent: unsent, failure: failure, agentUnreachable: unreachable)
    }

    /// Connects again, waiting 0.1 s, then twice as long each time up to 5 s, for ``reconnectPatience``.
    private static func reconnect(path: String) -> AgentSocket? {
        let deadline = ContinuousClock.now + reconnectPatience
        var pause = Duration.milliseconds(100)
        while true {
            if let socket = try? AgentSocket(path: path) { return socket }
            guard ContinuousClock.now + pause < deadline else { return nil }
            Self.pause(pause)
            pause = min(pause * 2, .seconds(5))
        }
    }

    private static func pause(_ duration: Duration) {
        NamedThread.sleep(for: duration)
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

    /// Refuses locally what cannot be one record, so it cannot change the request it is wrapped in.
    static func localProblem(_ line: [UInt8]) -> IntakeRejection? {
        line.withUnsafeBytes { raw -> IntakeRejection? in
            var scanner = JSONScanner(raw)
            do throws(JSONScanError) {
                scanner.skipWhitespace()
                guard scanner.peek() == UInt8(ascii: "{") else { return .badRequest(.invalidRow, "each line must be a JSON object") }
                try scanner.skipValue(depth: 1, maxDepth: StreamAPILimits.maxDepth)
                scanner.skipWhitespace()
                guard scanner.isAtEnd else { throw scanner.unexpected("end of line after the JSON object") }
                return nil
            } catch {
                return IntakeLineParser.rejection(for: error, row: nil)
            }
        }
    }
}

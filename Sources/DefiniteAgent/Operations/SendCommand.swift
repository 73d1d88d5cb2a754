import ArgumentParser
import Foundation
import NIOConcurrencyHelpers

/// `definite-agent send`: sends NDJSON records through the agent's socket, with acknowledgements.
///
/// Lines are pipelined (a writer thread sends while the main thread reads acks), one request per line
/// with the line number as its ack id, so each refusal names its line.
struct SendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send NDJSON records to the running agent and wait until each is durable.",
        discussion: """
            Reads one JSON object per line from FILE (or standard input). Prints "accepted N, rejected M"; \
            each rejected line's number and reason go to stderr. Exits 0 only if every record is durable.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: "Target table, \"namespace.table\" or \"LAKE.namespace.table\".")
    var table: String

    @Option(name: .long, help: "append or merge (default: the table's [[table]] mode, else append).")
    var mode: String?

    @Option(name: .long, help: "The merge key column (with --mode merge).")
    var primaryKey: String?

    @Option(name: .long, help: ArgumentHelp("The agent's socket (default: [intake] socket from the configuration).", valueName: "path"))
    var socket: String?

    @Argument(help: "An NDJSON file; standard input when omitted or \"-\".")
    var file: String?

    func validate() throws {
        if let problem = TableName.problem(with: table) { throw ValidationError(problem) }
        if let mode, AgentConfiguration.Mode(rawValue: mode) == nil { throw ValidationError("--mode must be append or merge") }
        if mode == "merge", primaryKey == nil { throw ValidationError("--mode merge needs --primary-key") }
    }

    func run() async throws {
        let path = try socket ?? global.loadConfiguration().0.intake.socket
        var config = "{\"table\":\(JSONCompactor.quote(table))"
        if let mode { config += ",\"mode\":\(JSONCompactor.quote(mode))" }
        if let primaryKey { config += ",\"primary_key\":[\(JSONCompactor.quote(primaryKey))]" }
        config += "}"

        let input: FileHandle
        if let file, file != "-" {
            guard let handle = FileHandle(forReadingAtPath: file) else {
                printError("error: cannot read \(file)")
                throw ExitCode(66)  // EX_NOINPUT
            }
            input = handle
        } else {
            input = FileHandle.standardInput
        }
        let connection: UnixStreamConnection
        do {
            connection = try UnixStreamConnection(path: path)
        } catch {
            printError("error: cannot connect to the agent at \(path): \(error) (is it running? see --socket)")
            throw ExitCode(69)  // EX_UNAVAILABLE
        }
        let summary = Sender(connection: connection, input: input, configJSON: config).run()
        print("accepted \(summary.accepted), rejected \(summary.rejected)")
        if summary.unconfirmed > 0 {
            printError("error: \(summary.unconfirmed) records were sent but not confirmed before the connection closed; they may or may not be spooled")
        }
        if summary.rejected > 0 || summary.unconfirmed > 0 { throw ExitCode(1) }
    }
}

/// Pipelines requests on one connection and tallies the replies.
private struct Sender {
    struct Summary {
        var accepted = 0
        var rejected = 0
        var unconfirmed = 0
    }

    private struct Progress {
        var sent = 0
        var finishedSending = false
        var localRejected = 0
    }

    let connection: UnixStreamConnection
    let input: FileHandle
    let configJSON: String

    func run() -> Summary {
        let progress = NIOLockedValueBox(Progress())
        let done = DispatchSemaphore(value: 0)
        let connection = self.connection
        let input = self.input
        let prefix = Array(",\"config\":\(configJSON),\"data\":".utf8)
        let thread = Thread {
            Self.sendAll(from: input, over: connection, prefix: prefix, progress: progress)
            done.signal()
        }
        thread.start()

        var summary = Summary()
        var replies = 0
        var reader = LineReader(fd: connection.fd)
        while true {
            let state = progress.withLockedValue { $0 }
            if state.finishedSending, replies >= state.sent { break }
            guard let line = reader.next() else { break }
            replies += 1
            guard let reply = try? line.withUnsafeBytes({ try JSONValue.parse($0) }) else { continue }
            var records = 1
            if case .number(let text)? = reply["accepted"] { records = Int(text) ?? 1 }
            if case .bool(true)? = reply["ok"] {
                summary.accepted += records
                continue
            }
            summary.rejected += 1
            let where_: String
            if case .string(let ack)? = reply["ack"] { where_ = "line \(ack)" } else { where_ = "request \(replies)" }
            var status = "?"
            if case .number(let code)? = reply["status"] { status = code }
            var message = ""
            if case .string(let text)? = reply["error"] { message = text }
            printError("\(where_): \(status): \(message)")
        }
        done.wait()
        let state = progress.withLockedValue { $0 }
        summary.rejected += state.localRejected
        summary.unconfirmed = max(0, state.sent - replies)
        connection.close()
        return summary
    }

    private static func sendAll(from input: FileHandle, over connection: UnixStreamConnection, prefix: [UInt8], progress: NIOLockedValueBox<Progress>) {
        var reader = LineReader(fd: input.fileDescriptor)
        var lineNumber = 0
        var out: [UInt8] = []
        out.reserveCapacity(1 << 16)
        var pending = 0
        func flush() -> Bool {
            guard !out.isEmpty else { return true }
            let ok = connection.write(out)
            out.removeAll(keepingCapacity: true)
            progress.withLockedValue { $0.sent += pending }
            pending = 0
            return ok
        }
        while var line = reader.next() {
            lineNumber += 1
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            if let problem = Self.localProblem(line) {
                progress.withLockedValue { $0.localRejected += 1 }
                printError("line \(lineNumber): \(problem.status): \(problem.message)")
                continue
            }
            out.append(contentsOf: Array("{\"ack\":\"\(lineNumber)\"".utf8))
            out.append(contentsOf: prefix)
            out.append(contentsOf: line)
            out.append(contentsOf: [UInt8(ascii: "}"), UInt8(ascii: "\n")])
            pending += 1
            if out.count >= 1 << 16, !flush() { break }
        }
        _ = flush()
        progress.withLockedValue { $0.finishedSending = true }
    }

    /// Refuses locally what cannot be one record, so it cannot change the request it is wrapped in.
    private static func localProblem(_ line: [UInt8]) -> IntakeRejection? {
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

/// A blocking Unix stream socket, for the CLI.
final class UnixStreamConnection: Sendable {
    let fd: Int32

    struct ConnectError: Error, CustomStringConvertible {
        var description: String
    }

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ConnectError(description: String(cString: strerror(errno))) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Foundation.close(fd)
            throw ConnectError(description: "socket path too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            Foundation.close(fd)
            throw ConnectError(description: reason)
        }
    }

    /// Writes all of `bytes`; `false` when the connection failed.
    func write(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return true
        }
    }

    func close() { Foundation.close(fd) }
}

/// Reads `\n`-terminated lines from a file descriptor (the final line may lack its newline).
struct LineReader {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false

    init(fd: Int32) { self.fd = fd }

    mutating func next() -> [UInt8]? {
        var searchFrom = start
        while true {
            if let newline = buffer[searchFrom...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                return line
            }
            if eof {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                return line
            }
            if start > 0 {
                buffer.removeFirst(start)
                start = 0
            }
            searchFrom = buffer.count
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 {
                eof = true
                continue
            }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

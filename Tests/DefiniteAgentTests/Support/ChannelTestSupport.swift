import Foundation
import Glibc
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

/// A logger that writes nothing (the handlers under test log refusals).
let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// A real ``SpoolWriter`` on a new spool in a temporary directory, running, for one test. Call
/// ``shutDown()`` at the end (it commits what is queued, so every promise the writer holds completes).
struct TestSpool {
    let path: String
    let writer: SpoolWriter

    init(_ prefix: String, maxBytes: Int = 1 << 30) throws {
        path = try makeTemporaryDirectory(prefix) + "/spool.db"
        writer = try SpoolWriter(path: path, durability: .normal, maxBytes: maxBytes, logger: quietLogger)
        writer.start()
    }

    /// Rows the spool holds, not yet delivered, per table.
    func pending() throws -> [String: Int] {
        var rows: [String: Int] = [:]
        for target in try SpoolStatus.read(path: path).targets { rows[target.table, default: 0] += target.pending }
        return rows
    }

    /// The records stored for `table`, in order, as stored (compact JSON, one per element).
    func records(of table: String) throws -> [String] {
        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared(
            """
            SELECT \(SegmentLog.records) FROM segments s JOIN targets t ON t.id = s.target_id
            WHERE t.table_name = ? ORDER BY s.first_seq
            """)
        rows.bind(1, table)
        var records: [String] = []
        while try rows.step() {
            records += String(decoding: rows.blob(0), as: UTF8.self).split(separator: "\n").map(String.init)
        }
        rows.reset()
        return records
    }

    func shutDown() {
        writer.shutdown()
    }
}

/// Drives a ``NIOAsyncTestingChannel`` whose handlers answer asynchronously: the spool writer completes
/// their promises from its own thread, which `NIOAsyncTestingEventLoop` (unlike `EmbeddedEventLoop`,
/// which may only be touched from the thread that made it) accepts from any thread and runs on its queue.
/// What the channel writes out is collected here until a test has what it waits for, or a deadline passes.
struct OutboundCollector<Out: Sendable> {
    let channel: NIOAsyncTestingChannel
    let bytesOf: (Out) -> [UInt8]
    /// Everything written out so far and not yet taken.
    var bytes: [UInt8] = []

    init(_ channel: NIOAsyncTestingChannel, as type: Out.Type = Out.self, bytesOf: @escaping (Out) -> [UInt8]) {
        self.channel = channel
        self.bytesOf = bytesOf
    }

    /// Moves what the channel wrote since the last call into ``bytes``.
    mutating func drain() async throws {
        await channel.testingEventLoop.run()
        while let out = try await channel.readOutbound(as: Out.self) { bytes += bytesOf(out) }
    }

    /// Collects until `done(bytes)` holds; returns whether it did before `timeout`.
    mutating func collect(within timeout: Duration = .seconds(5), until done: ([UInt8]) -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            try await drain()
            if done(bytes) { return true }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Waits for `count` lines (newline-terminated) and takes them, without their newlines.
    mutating func lines(_ count: Int, within timeout: Duration = .seconds(5)) async throws -> [String] {
        let arrived = try await collect(within: timeout) { $0.count(where: { $0 == UInt8(ascii: "\n") }) >= count }
        try #require(arrived, "expected \(count) reply lines, got: \(String(decoding: bytes, as: UTF8.self))")
        var lines: [String] = []
        while lines.count < count, let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) {
            lines.append(String(decoding: bytes[..<newline], as: UTF8.self))
            bytes.removeSubrange(...newline)
        }
        return lines
    }

    /// Whether the channel is closed (after running what its loop has queued).
    func isClosed() async throws -> Bool {
        await channel.testingEventLoop.run()
        let channel = channel
        return try await channel.testingEventLoop.executeInContext { !channel.isActive }
    }

    /// Waits until the channel closed; returns whether it did before `timeout`.
    func waitUntilClosed(within timeout: Duration = .seconds(5)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await isClosed() { return true }
            try await Task.sleep(for: .milliseconds(2))
        }
        return try await isClosed()
    }
}

extension NIOAsyncTestingChannel {
    /// A channel with the handlers `initialize` adds, registered and active (connected), as an accepted
    /// connection is when its handlers see it.
    static func connected(_ initialize: @escaping @Sendable (ChannelPipeline.SynchronousOperations) throws -> Void) async throws
        -> NIOAsyncTestingChannel
    {
        let channel = try await NIOAsyncTestingChannel { channel in try initialize(channel.pipeline.syncOperations) }
        try await channel.connect(to: try SocketAddress(unixDomainSocketPath: "/tmp/test-peer.sock")).get()
        return channel
    }

    /// Fires `event` into the pipeline from the channel's event loop.
    func fireUserEvent(_ event: any Sendable) async throws {
        try await testingEventLoop.executeInContext { self.pipeline.fireUserInboundEventTriggered(event) }
    }
}

/// An HTTP response read back as bytes.
struct HTTPTestResponse {
    var status: Int
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    var json: [String: Any] {
        get throws {
            try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any], "not a JSON object: \(body.text)")
        }
    }

    /// The first of the documented `errors`.
    var error: String? {
        get throws { (try json["errors"] as? [String])?.first }
    }

    /// The first complete response in `bytes` (its length given by Content-Length), and the bytes it took.
    static func parse(_ bytes: [UInt8]) -> (HTTPTestResponse, Int)? {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: separator) }) else { return nil }
        let lines: [String] = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers.append((String(line[..<colon]), value))
        }
        let length = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        let bodyStart = end + separator.count
        guard bytes.count >= bodyStart + length else { return nil }
        return (HTTPTestResponse(status: status, headers: headers, body: Array(bytes[bodyStart..<bodyStart + length])), bodyStart + length)
    }
}

// MARK: Real Unix sockets

/// A blocking client of a Unix stream socket, with a receive timeout so that no test can hang on it.
struct UnixClient: ~Copyable {
    let fd: Int32

    init(path: String, timeout: Duration = .seconds(5)) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        var limit = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let connected = SocketPath.withAddress(of: path) { connect(fd, $0, $1) }
        if connected != 0 { close(fd) }
        try #require(connected == 0, "cannot connect to \(path): errno \(errno)")
    }

    deinit { close(fd) }

    func send(_ text: String) throws {
        try #require(trySend(text), "send failed: errno \(errno)")
    }

    /// Sends `text`; false if the peer had already closed (or another error).
    func trySend(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }

    /// Reads until `done(received)` holds, the peer closes, or the receive timeout passes (then `closed`
    /// is false). A peer that closes without reading what it was sent is seen as ECONNRESET once its data
    /// is read: that counts as closed too.
    func receive(until done: ([UInt8]) -> Bool = { _ in false }) -> (bytes: [UInt8], closed: Bool) {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !done(received) {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return (received, true) }
            if n < 0 {
                if errno == EINTR { continue }
                return (received, errno == ECONNRESET)
            }
            received += chunk[..<n]
        }
        return (received, false)
    }
}

extension Collection where Element == UInt8 {
    var text: String { String(decoding: self, as: UTF8.self) }
}

import Foundation
import Histogram
import Synchronization

/// Clients of the intake socket. Every record asks for an ack; replies come back in line order.
enum IntakeClient {
    /// What one connection achieved.
    struct Outcome: Sendable {
        var acked = 0
        var failed = 0
    }

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw BenchError("connect \(path): \(String(cString: strerror(errno)))")
        }
        // Reads time out every 100 ms so a receiver can notice that its sender has finished.
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Writes all of `bytes`; false if the connection broke.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Sender progress shared with the receiving thread of the same connection.
    private final class SenderState: Sendable {
        let sent = Atomic<Int>(0)
        let finished = Atomic<Bool>(false)
    }

    /// Reads replies, calling `onLine(k, isFailure)` for the k-th reply line, until the sender has finished
    /// and every line it sent is answered. Failure replies carry `"ok":false`.
    private static func receive(
        fd: Int32, state: SenderState, stallLimit: Double = 60,
        onLine: (Int, Bool) -> Void
    ) throws -> Outcome {
        let needle = Array("\"ok\":false".utf8)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var outcome = Outcome()
        var lastProgress = Monotonic.nanos()
        var lineIsFailure = false
        // The matcher runs across reads: how many bytes of `needle` the current line has matched.
        var matched = 0
        while true {
            if state.finished.load(ordering: .acquiring) && outcome.acked >= state.sent.load(ordering: .acquiring) {
                return outcome
            }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                if Monotonic.seconds(since: lastProgress) > stallLimit {
                    throw BenchError("no reply for \(Int(stallLimit)) s after \(outcome.acked) acks")
                }
                continue
            }
            if n <= 0 {
                throw BenchError("connection closed after \(outcome.acked) of \(state.sent.load(ordering: .acquiring)) acks")
            }
            lastProgress = Monotonic.nanos()
            for i in 0..<n {
                let byte = buffer[i]
                if byte == UInt8(ascii: "\n") {
                    onLine(outcome.acked, lineIsFailure)
                    if lineIsFailure { outcome.failed += 1 }
                    outcome.acked += 1
                    lineIsFailure = false
                    matched = 0
                } else if !lineIsFailure {
                    matched = byte == needle[matched] ? matched + 1 : (byte == needle[0] ? 1 : 0)
                    if matched == needle.count { lineIsFailure = true }
                }
            }
        }
    }

    /// One pipelining connection: a sender thread writes records as fast as the socket takes them (from
    /// corpus line `first` on) until `count` are sent or the monotonic clock passes `deadline`; this thread
    /// reads the acks. Returns when every sent record is answered.
    static func pipelined(
        socket path: String, corpus: Corpus, first: Int, count: Int = .max,
        deadline: UInt64 = .max
    ) throws -> Outcome {
        let fd = try connect(path)
        defer { close(fd) }
        let state = SenderState()
        let sender = Thread {
            corpus.spans(first: first, total: count) { span, lines in
                guard Monotonic.nanos() < deadline, writeAll(fd, span) else { return false }
                state.sent.add(lines, ordering: .releasing)
                return true
            }
            state.finished.store(true, ordering: .releasing)
        }
        sender.start()
        return try receive(fd: fd, state: state) { _, _ in }
    }

    /// One paced connection for latency: record `k` is due at `start + k × interval` and sent alone (one
    /// write) at that time, or at once if the sender is late. The latency of reply `k` is measured from its
    /// due time, not from its actual send, so a stalled sender cannot hide latency (no coordinated
    /// omission). Returns the ack latencies in nanoseconds.
    static func paced(
        socket path: String, corpus: Corpus, first: Int, count: Int, start: UInt64,
        interval: UInt64
    ) throws -> (Outcome, Histogram<UInt64>) {
        let fd = try connect(path)
        defer { close(fd) }
        let state = SenderState()
        let sender = Thread {
            var k = 0
            corpus.spans(first: first, total: count, maxBytes: 0) { span, lines in
                Monotonic.sleep(until: start + UInt64(k) * interval)
                guard writeAll(fd, span) else { return false }
                k += lines
                state.sent.add(lines, ordering: .releasing)
                return true
            }
            state.finished.store(true, ordering: .releasing)
        }
        sender.start()
        var histogram = Histogram<UInt64>(highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
        let outcome = try receive(fd: fd, state: state) { k, _ in
            let now = Monotonic.nanos()
            let due = start + UInt64(k) * interval
            histogram.record(now > due ? now - due : 0)
        }
        return (outcome, histogram)
    }
}

import Foundation

/// The benchmark's records: ~200-byte JSON objects with strings, numbers and a nested object.
enum Workload {
    static func record(_ i: Int, ack: String?) -> [UInt8] {
        let ackPart = ack.map { ",\"ack\":\"\($0)\"" } ?? ""
        let text =
            "{\"ts\":\(1_732_467_712_345 + i),\"host\":\"web-\(i % 16)\",\"level\":\"info\",\"user_id\":\(100_000 + i % 9973),"
            + "\"latency_ms\":\(Double(i % 1000) / 8),\"path\":\"/api/v1/items/\(i % 4096)\",\"ok\":true,"
            + "\"meta\":{\"region\":\"eu-west-1\",\"build\":\"a1b2c3d\",\"attempt\":\(i % 3)},\"msg\":\"request completed\"\(ackPart)}\n"
        return Array(text.utf8)
    }
}

/// Pre-rendered records, each asking for an ack, in one contiguous buffer, so that clients send slices of
/// it with no per-record work and the bench spends its CPU share (2 cores, shared with the daemon) on the
/// socket rather than on formatting. Record `n` of a run is corpus line `n % count`.
struct Corpus: Sendable {
    let bytes: [UInt8]
    /// `ends[i]` is the offset just past line `i`'s newline; line `i` starts at `ends[i - 1]` (or 0).
    let ends: [Int]
    var count: Int { ends.count }

    init(count: Int) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count * 230)
        var ends: [Int] = []
        ends.reserveCapacity(count)
        for i in 0..<count {
            bytes.append(contentsOf: Workload.record(i, ack: String(i)))
            ends.append(bytes.count)
        }
        self.bytes = bytes
        self.ends = ends
    }

    func start(_ line: Int) -> Int { line == 0 ? 0 : ends[line - 1] }

    /// Average line length in bytes (with the ack and the newline).
    var averageLineBytes: Double { Double(bytes.count) / Double(count) }

    /// Calls `body` with contiguous spans of whole lines covering records `first..<first + total` (wrapping
    /// around the corpus), each span at most ~`maxBytes`; stops early when `body` returns false.
    /// Returns how many records were handed over.
    @discardableResult
    func spans(
        first: Int, total: Int, maxBytes: Int = 1 << 16,
        _ body: (UnsafeRawBufferPointer, Int) -> Bool
    ) -> Int {
        var done = 0
        return bytes.withUnsafeBytes { raw in
            while done < total {
                let a = (first + done) % count
                var b = a + 1
                let limit = min(count, a + min(total - done, count))
                while b < limit && ends[b] - start(a) <= maxBytes { b += 1 }
                let span = UnsafeRawBufferPointer(rebasing: raw[start(a)..<ends[b - 1]])
                guard body(span, b - a) else { return done }
                done += b - a
            }
            return done
        }
    }
}

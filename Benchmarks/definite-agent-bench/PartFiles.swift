import Foundation

/// The records `send` and the peer comparison load: `records` NDJSON records of exactly
/// ``recordBytes`` bytes each (newline included), record `i` in part `i % parts`, written once per bench
/// run into files of a temporary directory, so that every program reads the same bytes from the page cache.
struct PartFiles {
    static let recordBytes = 186

    let records: Int
    let paths: [String]
    private let directory: TemporaryDirectory

    init(records: Int, parts: Int = 8) throws {
        directory = try TemporaryDirectory("parts")
        self.records = records - records % parts
        var paths: [String] = []
        for part in 0..<parts {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(self.records / parts * Self.recordBytes)
            for i in stride(from: part, to: self.records, by: parts) { bytes.append(contentsOf: Self.record(i)) }
            let path = directory.path + "/part\(part).ndjson"
            guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
                throw BenchError("cannot write \(path)")
            }
            paths.append(path)
        }
        self.paths = paths
    }

    /// Record `i`: a log event like `Workload`'s, its message padded (or cut) to make the line
    /// ``recordBytes`` long.
    static func record(_ i: Int) -> [UInt8] {
        let head =
            "{\"ts\":\(1_732_467_712_345 + i),\"host\":\"web-\(i % 16)\",\"level\":\"info\",\"user_id\":\(100_000 + i % 9973),"
            + "\"latency_ms\":\(Double(i % 1000) / 8),\"path\":\"/api/v1/items/\(i % 4096)\",\"ok\":true,"
            + "\"meta\":{\"region\":\"eu-west-1\",\"attempt\":\(i % 3)},\"msg\":\""
        let tail = "\"}\n"
        let room = recordBytes - head.utf8.count - tail.utf8.count
        precondition(room > 0, "record \(i) does not fit \(recordBytes) bytes")
        let message = String(String(repeating: "request completed ", count: 3).prefix(room))
        return Array((head + message + tail).utf8)
    }

    var bytes: Int { records * Self.recordBytes }

    func remove() { directory.remove() }
}

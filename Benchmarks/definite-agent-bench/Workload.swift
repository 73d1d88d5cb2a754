import Foundation

/// The benchmark's records: ~200-byte JSON objects with strings, numbers and a nested object.
enum Workload {
    static func record(_ i: Int, ack: String?) -> [UInt8] {
        let ackPart = ack.map { ",\"ack\":\"\($0)\"" } ?? ""
        let text = "{\"ts\":\(1_732_467_712_345 + i),\"host\":\"web-\(i % 16)\",\"level\":\"info\",\"user_id\":\(100_000 + i % 9973),"
            + "\"latency_ms\":\(Double(i % 1000) / 8),\"path\":\"/api/v1/items/\(i % 4096)\",\"ok\":true,"
            + "\"meta\":{\"region\":\"eu-west-1\",\"build\":\"a1b2c3d\",\"attempt\":\(i % 3)},\"msg\":\"request completed\"\(ackPart)}\n"
        return Array(text.utf8)
    }
}

import Foundation

/// The Stream API emulator in null mode (authenticates, decompresses, parses, writes nothing), started on
/// an ephemeral port; `/_stats` gives the bytes it received.
final class Emulator {
    static let apiKey = "k"
    let port: Int
    private let process = Process()
    private let lake: TemporaryDirectory

    init(script: String) throws {
        lake = try TemporaryDirectory("lake")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", script, "--listen", "127.0.0.1:0", "--lake", lake.path,
            "--api-key", Emulator.apiKey, "--null", "--quiet",
        ]
        let stdout = Pipe()
        process.standardOutput = stdout
        try process.run()
        // The first line is `listening on HOST:PORT` (EOF if it failed to start).
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(stdout.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != UInt8(ascii: "\n") {
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("listening on "), let port = text.split(separator: ":").last.flatMap({ Int($0) }) else {
            process.terminate()
            lake.remove()
            throw BenchError("the emulator did not start (\(text.isEmpty ? "no output" : text))")
        }
        self.port = port
    }

    /// CPU seconds the emulator has used so far.
    var cpuSeconds: Double { procCPUSeconds(pid: process.processIdentifier) }

    var streamURL: String { "http://127.0.0.1:\(port)/v2/stream" }

    func resetStats() throws {
        _ = try HTTP.request(port: port, method: "POST", path: "/_stats/reset")
    }

    /// Changes fault settings (`POST /_control`), e.g. `{"latency_ms":150}`.
    func control(_ json: String) throws {
        _ = try HTTP.request(port: port, method: "POST", path: "/_control", body: json)
    }

    /// `bytes_received` (request bodies as sent, i.e. compressed), `rows_received` and `total_requests`
    /// since the last reset.
    func stats() throws -> (bytes: Int, rows: Int, requests: Int) {
        let body = try HTTP.request(port: port, method: "GET", path: "/_stats")
        guard let object = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let bytes = object["bytes_received"] as? Int, let rows = object["rows_received"] as? Int,
            let requests = object["total_requests"] as? Int
        else { throw BenchError("unexpected /_stats answer") }
        return (bytes, rows, requests)
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        lake.remove()
    }
}

/// A minimal HTTP/1.1 client for the emulator's control endpoints (one request per connection).
enum HTTP {
    static func request(port: Int, method: String, path: String, body: String = "") throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw BenchError("cannot reach the emulator on port \(port)") }
        let request =
            "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        guard Array(request.utf8).withUnsafeBytes({ IntakeClient.writeAll(fd, $0) }) else {
            throw BenchError("cannot send to the emulator")
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let split = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }),
            String(decoding: response.prefix(12), as: UTF8.self).hasSuffix("200")
        else { throw BenchError("\(method) \(path): bad answer") }
        return Array(response[(split + 4)...])
    }
}

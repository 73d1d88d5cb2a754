import Foundation

/// One pipelining client: a thread sends all its records with acks while the caller's thread counts
/// the ack lines coming back.
enum IntakeClient {
    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw BenchError("connect \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n <= 0 { if errno == EINTR { continue }; return }
                offset += n
            }
        }
    }

    /// Sends `count` records starting at `first` and waits for every ack; returns failed acks.
    static func run(socket path: String, first: Int, count: Int) throws -> Int {
        let fd = try connect(path)
        defer { close(fd) }
        let sender = Thread {
            var chunk: [UInt8] = []
            chunk.reserveCapacity(1 << 16)
            for i in first..<(first + count) {
                chunk.append(contentsOf: Workload.record(i, ack: String(i)))
                if chunk.count >= 1 << 16 {
                    writeAll(fd, chunk)
                    chunk.removeAll(keepingCapacity: true)
                }
            }
            writeAll(fd, chunk)
        }
        sender.start()
        var received = 0
        var failed = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while received < count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; break }
            for i in 0..<n where buffer[i] == UInt8(ascii: "\n") { received += 1 }
            if let text = String(bytes: buffer[0..<n], encoding: .utf8), text.contains("\"ok\":false") {
                failed += text.components(separatedBy: "\"ok\":false").count - 1
            }
        }
        guard received == count else { throw BenchError("connection closed after \(received) of \(count) acks") }
        return failed
    }
}

import Foundation

/// Disk writes at a low rate (issue 19): one client that sends one record and waits for its ack before the
/// next (a web app acknowledging each request), at a steady pace, with delivery running. Every record is a
/// commit of its own; what counts is how many bytes each costs on disk.
///
/// Bytes are the daemon's own, from `/proc/PID/io` over the paced part of the run: `wchar` (bytes passed to
/// write calls: the WAL, checkpoints, the few bytes of acks and logs) and `write_bytes` (what the kernel
/// sent to storage for it, in whole 4 KiB blocks: a WAL frame of a 4 KiB page, 4,120 bytes, dirties two).
struct LowRate {
    let binary: String
    let emulator: Emulator

    struct Figures {
        var records: Int
        var rate: Double
        var writtenPerRecord: Double
        var storagePerRecord: Double
        var seconds: Double
    }

    func measure(records: Int, perSecond rate: Double) throws -> Figures {
        let directory = try TemporaryDirectory("lowrate")
        defer { directory.remove() }
        let daemon = try Daemon(
            binary: binary, directory: directory.path,
            options: DaemonOptions(apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
        defer { daemon.stop() }
        let fd = try IntakeClient.connect(daemon.socket)
        defer { close(fd) }
        // The target and its first pages exist before the measured part.
        try exchange(fd, #"{"event":"warm_up","ack":"w"}"# + "\n")
        usleep(200_000)

        let before = try io(daemon.pid)
        let start = Monotonic.nanos()
        for i in 0..<records {
            try exchange(fd, #"{"event":"page_view","user":\#(i),"path":"/home","ack":"\#(i)"}"# + "\n")
            let due = start + UInt64(Double(i + 1) / rate * 1e9)
            let now = Monotonic.nanos()
            if due > now { usleep(UInt32((due - now) / 1000)) }
        }
        let seconds = Monotonic.seconds(since: start)
        let after = try io(daemon.pid)
        return Figures(
            records: records, rate: Double(records) / seconds,
            writtenPerRecord: Double(after.wchar - before.wchar) / Double(records),
            storagePerRecord: Double(after.writeBytes - before.writeBytes) / Double(records),
            seconds: seconds)
    }

    /// Sends one line and reads its ack.
    private func exchange(_ fd: Int32, _ line: String) throws {
        let sent = Array(line.utf8).withUnsafeBytes { IntakeClient.writeAll(fd, $0) }
        guard sent else { throw BenchError("the daemon closed the connection") }
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        while byte != UInt8(ascii: "\n") {
            guard read(fd, &byte, 1) == 1 else { throw BenchError("no ack from the daemon") }
            reply.append(byte)
        }
        guard String(decoding: reply, as: UTF8.self).contains(#""ok":true"#) else {
            throw BenchError("refused: \(String(decoding: reply, as: UTF8.self))")
        }
    }

    private func io(_ pid: Int32) throws -> (wchar: Int, writeBytes: Int) {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) else {
            throw BenchError("cannot read /proc/\(pid)/io")
        }
        var values: [Substring: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":")
            if parts.count == 2 { values[parts[0]] = Int(parts[1].trimmingCharacters(in: .whitespaces)) }
        }
        return (values["wchar"] ?? 0, values["write_bytes"] ?? 0)
    }
}

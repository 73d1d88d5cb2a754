import Foundation

/// (7) Delivery at scale: many tables, per-request trace tags and a distant API (the emulator answering
/// after an injected latency), then what the daemon does once it is idle.
struct Scale {
    struct Drain {
        var label: String
        var rows: Int
        var seconds: Double
        var requests: Int
        var peakRSSKiB: Int
    }

    struct Idle {
        /// Context switches of all the daemon's threads per second: how often it wakes up.
        var wakeupsPerSecond: Double
        /// CPU used, as a share of one core.
        var cpuShare: Double
    }

    let binary: String
    let emulator: Emulator

    /// `tables` tables of `rows` rows each, one request per table; seconds from the first send until the
    /// spool has nothing pending, with the API answering after `latencyMs`. Then the idle figures.
    func manyTables(tables: Int, rows: Int, latencyMs: Int) throws -> (Drain, Idle) {
        let lines = (0..<tables).map { t in
            let data = (0..<rows).map { "{\"t\":\(t),\"i\":\($0),\"text\":\"row \($0) of table \(t)\"}" }.joined(separator: ",")
            return "{\"data\":[\(data)],\"config\":{\"table\":\"bronze.scale_\(t)\"},\"ack\":\"t\(t)\"}"
        }
        return try drain(label: "\(tables) tables × \(rows) rows", lines: lines, rows: tables * rows, latencyMs: latencyMs)
    }

    /// `count` one-row requests to one table, each with its own `config.tags.trace_id`.
    func traceTags(count: Int, latencyMs: Int) throws -> (Drain, Idle) {
        let lines = (0..<count).map { n in
            "{\"data\":{\"n\":\(n),\"text\":\"request \(n)\"},\"config\":{\"table\":\"bronze.traced\",\"tags\":{\"trace_id\":\"t-\(n)\"}},\"ack\":\"\(n)\"}"
        }
        return try drain(
            label: "\(Format.grouped(Double(count))) one-row requests, a trace_id each", lines: lines, rows: count,
            latencyMs: latencyMs)
    }

    private func drain(label: String, lines: [String], rows: Int, latencyMs: Int) throws -> (Drain, Idle) {
        let directory = try TemporaryDirectory("scale")
        defer { directory.remove() }
        let daemon = try Daemon(
            binary: binary, directory: directory.path,
            options: DaemonOptions(apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
        defer { daemon.stop() }
        try emulator.control(#"{"latency_ms":\#(latencyMs)}"#)
        defer { try? emulator.control(#"{"latency_ms":0}"#) }
        try emulator.resetStats()
        let probe = try SpoolProbe(spool: daemon.spool)
        let start = Monotonic.nanos()
        try Self.send(lines, socket: daemon.socket)
        guard try probe.waitUntilDrained(timeout: 300) else {
            throw BenchError("\(label): not drained in 300 s: \(daemon.logTail())")
        }
        let seconds = Monotonic.seconds(since: start)
        let requests = try emulator.stats().requests
        usleep(1_500_000)
        let idle = Self.idle(pid: daemon.pid, seconds: 5)
        return (Drain(label: label, rows: rows, seconds: seconds, requests: requests, peakRSSKiB: daemon.peakRSSKiB), idle)
    }

    /// Sends every line with its ack on one connection, then reads until every line is acknowledged.
    static func send(_ lines: [String], socket: String) throws {
        let fd = try IntakeClient.connect(socket)
        defer { close(fd) }
        let bytes = Array(lines.joined(separator: "\n").utf8) + [UInt8(ascii: "\n")]
        let writer = Thread { _ = bytes.withUnsafeBytes { IntakeClient.writeAll(fd, $0) } }
        writer.start()
        var replies = 0
        var failed = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let started = Monotonic.nanos()
        while replies < lines.count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                replies += buffer[0..<n].count { $0 == UInt8(ascii: "\n") }
                failed += String(decoding: buffer[0..<n], as: UTF8.self).components(separatedBy: "\"ok\":false").count - 1
            } else if n == 0 || Monotonic.seconds(since: started) > 120 {
                throw BenchError("the daemon answered \(replies) of \(lines.count) lines")
            }
        }
        guard failed == 0 else { throw BenchError("\(failed) of \(lines.count) lines refused") }
    }

    /// Wake-ups (context switches of all threads) and CPU over `seconds`.
    static func idle(pid: Int32, seconds: Double) -> Idle {
        let switches0 = contextSwitches(pid: pid)
        let cpu0 = procCPUSeconds(pid: pid)
        usleep(UInt32(seconds * 1_000_000))
        // Per thread: a thread that ended in between takes its switches with it, and a sum over the
        // process could then go down (an earlier version reported negative wake-ups). A thread started in
        // between counts all of its own.
        let switches = contextSwitches(pid: pid).reduce(0) { total, thread in
            total + max(0, thread.value - (switches0[thread.key] ?? 0))
        }
        return Idle(
            wakeupsPerSecond: Double(switches) / seconds,
            cpuShare: (procCPUSeconds(pid: pid) - cpu0) / seconds)
    }

    /// Voluntary and involuntary context switches of each thread of `pid` so far, by thread id.
    static func contextSwitches(pid: Int32) -> [String: Int] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var switches: [String: Int] = [:]
        for task in tasks {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8) else { continue }
            switches[task] = status.split(separator: "\n")
                .filter { $0.hasPrefix("voluntary_ctxt_switches") || $0.hasPrefix("nonvoluntary_ctxt_switches") }
                .reduce(0) { $0 + (Int($1.split(separator: "\t").last ?? "0") ?? 0) }
        }
        return switches
    }
}

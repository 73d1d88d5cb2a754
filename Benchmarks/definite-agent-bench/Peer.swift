import Foundation

/// (8) The agent against Fluent Bit, the same records through the same path on the same machine in the
/// same run: 8 `socat -u FILE:part UNIX-CONNECT:socket` writers (no acks) hand the part files
/// (``PartFiles``) to a Unix stream socket; each side keeps them on disk with fsync and delivers them as
/// gzipped NDJSON over HTTP to the null emulator. Timed from spawning the writers until the emulator has
/// counted every record (`/_stats` `rows_received`, polled every 20 ms, reset before each side). CPU is
/// the side's process (user + system, all threads, `/proc/<pid>/stat`) from just before the first write to
/// the end, per record; peak RSS is its VmHWM. The agent runs first, then Fluent Bit.
struct PeerComparison {
    struct Side {
        var name: String
        var records: Int
        var seconds: Double
        var recordsPerSecond: Double { Double(records) / seconds }
        var cpuMicrosPerRecord: Double
        var peakRSSKiB: Int
        /// Request bodies as the emulator received them (compressed), and how many requests.
        var bytesSent: Int
        var requests: Int
        /// CPU seconds the emulator used meanwhile (it shares the 2 cores).
        var emulatorCPU: Double
    }

    let binary: String
    let emulator: Emulator
    let parts: PartFiles

    /// The agent: `[spool] durability = "full"`, `[batch] format = "ndjson"` (gzip, the default level), the
    /// bench's default table for plain records.
    func agent() throws -> Side {
        let directory = try TemporaryDirectory("peer-agent")
        defer { directory.remove() }
        let daemon = try Daemon(
            binary: binary, directory: directory.path,
            options: DaemonOptions(batchFormat: "ndjson", apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
        defer { daemon.stop() }
        return try load(name: "definite-agent", socket: daemon.socket, pid: daemon.pid, logTail: daemon.logTail)
    }

    /// Fluent Bit with the configuration of its README in `/work/shared/peers` (filesystem storage,
    /// `storage.sync: full`, `out_http` with `format: json_lines`, `compress: gzip`, `workers: 2`).
    func fluentBit(path: String) throws -> Side {
        let directory = try TemporaryDirectory("peer-fluent-bit")
        defer { directory.remove() }
        let socket = directory.path + "/fluent-bit.sock"
        let config = """
            service:
              flush: 1
              log_level: warn
              storage.path: \(directory.path)/storage
              storage.sync: full
              storage.max_chunks_up: 128
            pipeline:
              inputs:
                - name: unix_socket
                  socket_path: \(socket)
                  socket_mode: STREAM
                  format: json
                  storage.type: filesystem
              outputs:
                - name: http
                  match: '*'
                  host: 127.0.0.1
                  port: \(emulator.port)
                  uri: /v2/stream?table=bronze.events
                  format: json_lines
                  json_date_key: false
                  compress: gzip
                  header: Authorization Bearer \(Emulator.apiKey)
                  workers: 2
                  retry_limit: false

            """
        try config.write(toFile: directory.path + "/fluent-bit.yaml", atomically: true, encoding: .utf8)
        let log = directory.path + "/fluent-bit.log"
        let peer = try Child([path, "-c", directory.path + "/fluent-bit.yaml"], stdout: log, stderr: directory.path + "/fluent-bit.err")
        defer { peer.terminate(grace: 15) }
        let tail = { () -> String in
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").suffix(5).joined(separator: " | ")
        }
        let start = Monotonic.nanos()
        while !Self.accepts(socket) {
            guard Monotonic.seconds(since: start) < 30, peer.isRunning else {
                throw BenchError("Fluent Bit did not open \(socket): \(tail())")
            }
            usleep(20_000)
        }
        return try load(name: "Fluent Bit", socket: socket, pid: peer.pid, logTail: tail)
    }

    /// Whether a Unix stream socket at `path` takes a connection now.
    static func accepts(_ path: String) -> Bool {
        guard let fd = try? IntakeClient.connect(path) else { return false }
        close(fd)
        return true
    }

    /// The 8 writers into `socket`, then the wait until the emulator has counted every record.
    private func load(name: String, socket: String, pid: Int32, logTail: () -> String) throws -> Side {
        try emulator.resetStats()
        let cpu = procCPUSeconds(pid: pid)
        let emulatorCPU = emulator.cpuSeconds
        let start = Monotonic.nanos()
        let writers = try parts.paths.map { part in
            try Child(
                ["/usr/bin/env", "socat", "-u", "FILE:\(part)", "UNIX-CONNECT:\(socket)"],
                stdout: "/dev/null", stderr: "/dev/null")
        }
        var received = 0
        while received < parts.records {
            guard Monotonic.seconds(since: start) < 600 else {
                for writer in writers { kill(writer.pid, SIGKILL) }
                throw BenchError("\(name): \(received) of \(parts.records) records at the emulator after 600 s: \(logTail())")
            }
            usleep(20_000)
            received = try emulator.stats().rows
        }
        let seconds = Monotonic.seconds(since: start)
        let cpuMicros = (procCPUSeconds(pid: pid) - cpu) * 1e6
        let sent = try emulator.stats()
        let side = Side(
            name: name, records: parts.records, seconds: seconds, cpuMicrosPerRecord: cpuMicros / Double(parts.records),
            peakRSSKiB: procStatusKiB(pid: pid, field: "VmHWM"), bytesSent: sent.bytes, requests: sent.requests,
            emulatorCPU: emulator.cpuSeconds - emulatorCPU)
        for writer in writers where writer.wait().status != 0 {
            throw BenchError("\(name): socat exited \(writer.wait().status) (is socat installed? scripts/install-deps)")
        }
        guard received == parts.records else {
            throw BenchError("\(name): the emulator counted \(received) records of \(parts.records)")
        }
        return side
    }
}

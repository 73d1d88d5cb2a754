import Foundation

/// What a daemon run is configured with, beyond the temporary paths.
struct DaemonOptions {
    var durability = "full"
    /// `[batch] compression` and `gzip_level`; nil keeps the defaults (gzip, level 6).
    var compression: String?
    var gzipLevel: Int?
    /// `[batch] format` ("json" or "ndjson"); nil keeps the default (json).
    var batchFormat: String?
    /// `[api] url` and `$DEFINITE_API_KEY`; without a key nothing is delivered (the spool only fills).
    var apiURL: String?
    var apiKey: String?
}

/// The release `definite-agent run` on a directory of its own (config, spool, socket, log). It is started
/// with `$NOTIFY_SOCKET` pointing at a datagram socket the bench binds, and `init` returns once the daemon
/// said `READY=1` (spool open and recovered, socket listening): `startupSeconds` is spawn → READY.
/// A second daemon on the same directory reopens the same spool.
final class Daemon {
    let directory: String
    var socket: String { directory + "/agent.sock" }
    var spool: String { directory + "/spool.db" }
    let startupSeconds: Double
    private let process = Process()
    private var peakKiBAtStop = 0

    init(binary: String, directory: String, options: DaemonOptions = DaemonOptions()) throws {
        self.directory = directory
        var config = """
            [spool]
            path = "\(directory)/spool.db"
            durability = "\(options.durability)"
            max_bytes = "64GiB"
            [intake]
            socket = "\(directory)/agent.sock"
            http_socket = "\(directory)/http.sock"
            default_table = "bronze.bench"
            [log]
            level = "warning"

            """
        if let url = options.apiURL { config += "[api]\nurl = \"\(url)\"\n" }
        if options.compression != nil || options.gzipLevel != nil || options.batchFormat != nil { config += "[batch]\n" }
        if let compression = options.compression { config += "compression = \"\(compression)\"\n" }
        if let level = options.gzipLevel { config += "gzip_level = \(level)\n" }
        if let format = options.batchFormat { config += "format = \"\(format)\"\n" }
        try config.write(toFile: directory + "/agent.toml", atomically: true, encoding: .utf8)

        let notify = try NotifySocket(path: directory + "/notify.sock")
        defer { notify.close() }
        var environment = ProcessInfo.processInfo.environment
        for name in ["DEFINITE_API_KEY", "CREDENTIALS_DIRECTORY", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC"] {
            environment[name] = nil
        }
        environment["NOTIFY_SOCKET"] = notify.path
        if let key = options.apiKey { environment["DEFINITE_API_KEY"] = key }
        process.environment = environment
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["run", "--config", directory + "/agent.toml"]
        _ = FileManager.default.createFile(atPath: directory + "/daemon.log", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: directory + "/daemon.log")
        process.standardOutput = FileHandle.nullDevice

        let spawned = Monotonic.nanos()
        try process.run()
        let ready = notify.waitFor("READY=1", timeout: 120) { [process] in process.isRunning }
        startupSeconds = Monotonic.seconds(since: spawned)
        guard ready else {
            stop()
            throw BenchError("the daemon did not become ready: \(logTail())")
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// Resident set size now, in KiB.
    var rssKiB: Int { procStatusKiB(pid: pid, field: "VmRSS") }

    /// CPU seconds the daemon has used so far.
    var cpuSeconds: Double { procCPUSeconds(pid: pid) }

    /// Peak resident set size (VmHWM) so far, in KiB; after `stop()` the value read just before it.
    var peakRSSKiB: Int { process.isRunning ? procStatusKiB(pid: pid, field: "VmHWM") : peakKiBAtStop }

    /// The last lines of the daemon's log, for error messages.
    func logTail() -> String {
        let text = (try? String(contentsOfFile: directory + "/daemon.log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    /// SIGTERM and wait (the daemon answers what it read and checkpoints); SIGKILL after 60 s.
    func stop() {
        guard process.isRunning else { return }
        peakKiBAtStop = procStatusKiB(pid: pid, field: "VmHWM")
        process.terminate()
        let deadline = Monotonic.nanos() + 60_000_000_000
        while process.isRunning && Monotonic.nanos() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }
}

/// The receiving end of the sd_notify protocol: a bound `AF_UNIX` datagram socket.
final class NotifySocket {
    let path: String
    private var fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, rc == 0 else { throw BenchError("cannot bind the notify socket \(path)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits for a datagram with a line equal to `assignment`; false on timeout or when `alive()` says no.
    func waitFor(_ assignment: String, timeout: Double, alive: () -> Bool) -> Bool {
        let start = Monotonic.nanos()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Monotonic.seconds(since: start) < timeout {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                if text.split(separator: "\n").contains(Substring(assignment)) { return true }
            } else if !alive() {
                return false
            }
        }
        return false
    }

    func close() {
        if fd >= 0 {
            Foundation.close(fd)
            fd = -1
        }
        unlink(path)
    }
}

import Foundation

/// Starts the release `definite-agent` on temporary paths and stops it.
final class Daemon {
    let directory: String
    let socket: String
    let spool: String
    let process = Process()

    init(binary: String, durability: String, extraConfig: String = "") throws {
        directory = NSTemporaryDirectory() + "definite-agent-bench-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/agent.sock"
        spool = directory + "/spool.db"
        let config = """
            [spool]
            path = "\(spool)"
            durability = "\(durability)"
            max_bytes = "64GiB"
            [intake]
            socket = "\(socket)"
            default_table = "bronze.bench"
            [log]
            level = "warning"
            \(extraConfig)
            """
        try config.write(toFile: directory + "/agent.toml", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["run", "--config", directory + "/agent.toml"]
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: socket) {
            guard Date() < deadline, process.isRunning else { throw BenchError("the daemon did not start") }
            usleep(10_000)
        }
    }

    /// Resident set size of the daemon in KiB, from /proc.
    var rssKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    var peakRSSKiB: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

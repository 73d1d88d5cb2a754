import Foundation

/// (2b) `definite-agent send`, the command line client: 8 processes of the release binary, each loading
/// one part file (``PartFiles``) into a fresh daemon (durability full), every record acknowledged. The
/// rate is records over the time from spawning the processes until the last has exited; CPU is each
/// process's own (rusage), and the daemon's, per record.
struct SendLoad {
    struct Figures {
        var records: Int
        var recordsPerSecond: Double
        /// The send processes' CPU time (user + system) per record, all together.
        var sendCPUMicrosPerRecord: Double
        var daemonCPUMicrosPerRecord: Double
        var peakRSSKiB: Int
        var problems: [String]
    }

    let binary: String

    func measure(parts: PartFiles) throws -> Figures {
        let directory = try TemporaryDirectory("send")
        defer { directory.remove() }
        let daemon = try Daemon(binary: binary, directory: directory.path)
        defer { daemon.stop() }
        let daemonCPU = daemon.cpuSeconds
        let start = Monotonic.nanos()
        let children = try parts.paths.enumerated().map { i, path in
            try Child(
                [binary, "send", "--socket", daemon.socket, "--table", "bronze.bench", path],
                stdout: directory.path + "/send\(i).out", stderr: directory.path + "/send\(i).err")
        }
        let ends = children.map { $0.wait() }
        let seconds = Monotonic.seconds(since: start)
        let daemonMicros = (daemon.cpuSeconds - daemonCPU) * 1e6
        var problems: [String] = []
        let perPart = parts.records / parts.paths.count
        for (child, end) in zip(children, ends) {
            let said = child.output.trimmingCharacters(in: .whitespacesAndNewlines)
            if end.status != 0 || said != "accepted \(perPart), rejected 0" {
                problems.append("send exited \(end.status): \(said)")
            }
        }
        let sendMicros = ends.reduce(0) { $0 + $1.cpuSeconds } * 1e6
        return Figures(
            records: parts.records, recordsPerSecond: Double(parts.records) / seconds,
            sendCPUMicrosPerRecord: sendMicros / Double(parts.records),
            daemonCPUMicrosPerRecord: daemonMicros / Double(parts.records),
            peakRSSKiB: daemon.peakRSSKiB, problems: problems)
    }
}

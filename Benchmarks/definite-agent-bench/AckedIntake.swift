import Foundation

/// (2) Acknowledged intake: `clients` pipelining connections send `records` records in all, each with an
/// ack, to a fresh daemon; the rate counts acks (records durable), from the first send to the last ack.
struct AckedIntake {
    struct Figures {
        var recordsPerSecond: Double
        var failed: Int
        var errors: [String]
        var peakRSSKiB: Int
        /// The daemon's CPU time (user + system, all threads) per acknowledged record: steadier from run
        /// to run than the rate on a shared machine, so the figure to compare when changing the hot path.
        var daemonCPUMicrosPerRecord: Double
    }

    let binary: String
    let corpus: Corpus

    func measure(clients: Int, durability: String, records: Int) throws -> Figures {
        let directory = try TemporaryDirectory("intake")
        defer { directory.remove() }
        let daemon = try Daemon(binary: binary, directory: directory.path, options: DaemonOptions(durability: durability))
        defer { daemon.stop() }
        let cpuBefore = daemon.cpuSeconds
        let run = Self.send(corpus: corpus, socket: daemon.socket, clients: clients, records: records)
        let cpu = daemon.cpuSeconds - cpuBefore
        return Figures(
            recordsPerSecond: Double(run.acked) / run.seconds, failed: run.failed,
            errors: run.errors, peakRSSKiB: daemon.peakRSSKiB,
            daemonCPUMicrosPerRecord: cpu * 1e6 / Double(max(run.acked, 1)))
    }

    /// What a group of pipelining clients achieved together.
    struct Run {
        var acked = 0
        var failed = 0
        var errors: [String] = []
        var seconds = 0.0
    }

    /// `clients` pipelining connections: either `records` in all, or as many as fit before `deadline`.
    static func send(
        corpus: Corpus, socket: String, clients: Int, records: Int = .max,
        deadline: UInt64 = .max
    ) -> Run {
        let perClient = records == .max ? Int.max : records / clients
        let start = Monotonic.nanos()
        let outcomes = onThreads(clients) { c in
            try IntakeClient.pipelined(socket: socket, corpus: corpus, first: c * 7919, count: perClient, deadline: deadline)
        }
        var run = Run(seconds: Monotonic.seconds(since: start))
        for outcome in outcomes {
            switch outcome {
            case .success(let o):
                run.acked += o.acked
                run.failed += o.failed
            case .failure(let error): run.errors.append("\(error)")
            }
        }
        return run
    }
}

import Foundation

/// (5) Intake and delivery together: 8 pipelining clients send with acks for `seconds` to a daemon that
/// delivers (gzip, durability full) to the null emulator at the same time.
struct EndToEnd {
    struct Figures {
        var seconds: Double
        var intakePerSecond: Double
        var deliveredPerSecond: Double
        var pendingAtEnd: Int
        var failed: Int
        var errors: [String]
        var peakRSSKiB: Int
    }

    let binary: String
    let corpus: Corpus
    let emulator: Emulator

    func measure(clients: Int, seconds: Double) throws -> Figures {
        let directory = try TemporaryDirectory("e2e")
        defer { directory.remove() }
        try emulator.resetStats()
        let daemon = try Daemon(
            binary: binary, directory: directory.path,
            options: DaemonOptions(apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
        defer { daemon.stop() }
        let deadline = Monotonic.nanos() + UInt64(seconds * 1e9)
        let run = AckedIntake.send(corpus: corpus, socket: daemon.socket, clients: clients, deadline: deadline)
        let totals = try SpoolProbe(spool: daemon.spool).totals()
        return Figures(
            seconds: run.seconds, intakePerSecond: Double(run.acked) / run.seconds,
            deliveredPerSecond: Double(totals.delivered) / run.seconds, pendingAtEnd: totals.pending,
            failed: run.failed, errors: run.errors, peakRSSKiB: daemon.peakRSSKiB)
    }
}

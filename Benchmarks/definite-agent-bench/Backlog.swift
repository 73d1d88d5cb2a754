import Foundation

/// (6) Memory and start-up with a large backlog: fill a spool with `records` records (daemon without an
/// API key), stop; start a daemon with the key and the emulator on that spool and time spawn → `READY=1`;
/// then let it deliver for a few seconds, watching its RSS.
struct Backlog {
    struct Figures {
        var records: Int
        var fillPerSecond: Double
        var fillPeakRSSKiB: Int
        var readySeconds: Double
        var rssAtReadyKiB: Int
        var deliveringSeconds: Double
        var deliveredWhileWatched: Int
        var peakRSSKiB: Int
    }

    let binary: String
    let corpus: Corpus
    let emulator: Emulator

    /// Fills `directory`'s spool with `records` records through a daemon without an API key, then stops it.
    /// Returns the acked rate and the daemon's peak RSS.
    @discardableResult
    static func fill(binary: String, corpus: Corpus, directory: String, records: Int) throws -> (Double, Int) {
        let daemon = try Daemon(binary: binary, directory: directory)
        defer { daemon.stop() }
        let run = AckedIntake.send(corpus: corpus, socket: daemon.socket, clients: 8, records: records)
        guard run.errors.isEmpty, run.failed == 0, run.acked == records - records % 8 else {
            throw BenchError("filling the spool: \(run.acked) acked, \(run.failed) refused, \(run.errors.first ?? "")")
        }
        return (Double(run.acked) / run.seconds, daemon.peakRSSKiB)
    }

    func measure(records: Int, deliverSeconds: Double) throws -> Figures {
        let directory = try TemporaryDirectory("backlog")
        defer { directory.remove() }
        let (fillRate, fillPeak) = try Self.fill(binary: binary, corpus: corpus, directory: directory.path, records: records)
        let daemon = try Daemon(
            binary: binary, directory: directory.path,
            options: DaemonOptions(apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
        defer { daemon.stop() }
        let atReady = daemon.rssKiB
        let probe = try SpoolProbe(spool: daemon.spool)
        let start = Monotonic.nanos()
        while Monotonic.seconds(since: start) < deliverSeconds { usleep(100_000) }
        return Figures(
            records: records, fillPerSecond: fillRate, fillPeakRSSKiB: fillPeak,
            readySeconds: daemon.startupSeconds, rssAtReadyKiB: atReady,
            deliveringSeconds: deliverSeconds, deliveredWhileWatched: try probe.totals().delivered,
            peakRSSKiB: daemon.peakRSSKiB)
    }
}

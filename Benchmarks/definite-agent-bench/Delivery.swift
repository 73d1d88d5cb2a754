import Foundation

/// (4) Delivery of a pre-filled spool to the null emulator. The spool is filled once by a daemon without an
/// API key (nothing is cut or sent), which is then stopped; for each compression setting a copy of that
/// spool is drained by a daemon with the key and `[api] url` pointing at the emulator. The rate is records
/// over the time from spawning the daemon until the spool (read-only) shows nothing pending.
struct Delivery {
    /// One drain: `[batch] compression`, `gzip_level` (nil: the default, 6), and the API's latency.
    struct Setting: CustomStringConvertible {
        var compression: String
        var gzipLevel: Int?
        /// Added to each answer by the emulator (a distant API), in milliseconds.
        var latencyMs = 0
        var description: String {
            compression + (gzipLevel.map { " level \($0)" } ?? "") + (latencyMs > 0 ? ", API \(latencyMs) ms away" : "")
        }
    }

    struct Figures {
        var setting: Setting
        var records: Int
        var seconds: Double
        var recordsPerSecond: Double
        var pendingBytes: Int
        var bytesSent: Int
        var requests: Int
        var compressionRatio: Double { Double(pendingBytes) / Double(max(1, bytesSent)) }
        var peakRSSKiB: Int
        /// CPU seconds used during the drain by the daemon and by the emulator (same 2 cores).
        var daemonCPU: Double
        var emulatorCPU: Double
    }

    let binary: String
    let corpus: Corpus
    let emulator: Emulator

    func measure(records: Int, settings: [Setting]) throws -> [Figures] {
        let filled = try TemporaryDirectory("filled")
        defer { filled.remove() }
        try Backlog.fill(binary: binary, corpus: corpus, directory: filled.path, records: records)
        let before = try SpoolProbe(spool: filled.path + "/spool.db").totals()
        let records = before.pending

        return try settings.map { setting in
            let directory = try TemporaryDirectory("delivery-\(setting.compression)")
            defer { directory.remove() }
            for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: filled.path + "/spool.db" + suffix) {
                try FileManager.default.copyItem(
                    atPath: filled.path + "/spool.db" + suffix,
                    toPath: directory.path + "/spool.db" + suffix)
            }
            try emulator.resetStats()
            try emulator.control(#"{"latency_ms":\#(setting.latencyMs)}"#)
            defer { try? emulator.control(#"{"latency_ms":0}"#) }
            let emulatorCPU = emulator.cpuSeconds
            let start = Monotonic.nanos()
            let daemon = try Daemon(
                binary: binary, directory: directory.path,
                options: DaemonOptions(
                    compression: setting.compression, gzipLevel: setting.gzipLevel,
                    apiURL: emulator.streamURL, apiKey: Emulator.apiKey))
            defer { daemon.stop() }
            let probe = try SpoolProbe(spool: daemon.spool)
            guard try probe.waitUntilDrained(timeout: 600) else {
                throw BenchError("delivery (\(setting)) did not drain in 600 s: \(daemon.logTail())")
            }
            let seconds = Monotonic.seconds(since: start)
            let daemonCPU = daemon.cpuSeconds
            let sent = try emulator.stats()
            return Figures(
                setting: setting, records: records, seconds: seconds,
                recordsPerSecond: Double(records) / seconds, pendingBytes: before.pendingBytes,
                bytesSent: sent.bytes, requests: sent.requests, peakRSSKiB: daemon.peakRSSKiB, daemonCPU: daemonCPU,
                emulatorCPU: emulator.cpuSeconds - emulatorCPU)
        }
    }
}

import Foundation
import Histogram

/// (3) Ack latency at a fixed offered load: `clients` connections each pace `perClientRate` records/s
/// (staggered so the total arrives evenly), each record alone in its write and asking for an ack; the
/// latency of a record is from its due send time to its ack, recorded in an HdrHistogram (ns, 3 digits).
struct AckLatency {
    struct Figures {
        var histogram: Histogram<UInt64>
        var offeredPerSecond: Double
        var achievedPerSecond: Double
        var failed: Int
        var errors: [String]
        var peakRSSKiB: Int
    }

    let binary: String
    let corpus: Corpus

    func measure(clients: Int, perClientRate: Int, seconds: Double) throws -> Figures {
        let directory = try TemporaryDirectory("latency")
        defer { directory.remove() }
        let daemon = try Daemon(binary: binary, directory: directory.path)
        defer { daemon.stop() }
        let interval = UInt64(1_000_000_000 / perClientRate)
        let perClient = Int(Double(perClientRate) * seconds)
        let start = Monotonic.nanos() + 50_000_000
        let socket = daemon.socket
        let corpus = corpus
        let outcomes = onThreads(clients) { c in
            try IntakeClient.paced(
                socket: socket, corpus: corpus, first: c * perClient, count: perClient,
                start: start + UInt64(c) * interval / UInt64(clients), interval: interval)
        }
        let elapsed = Double(Monotonic.nanos() - start) / 1e9
        var histogram = Histogram<UInt64>(highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
        var figures = Figures(
            histogram: histogram, offeredPerSecond: Double(clients * perClientRate),
            achievedPerSecond: 0, failed: 0, errors: [], peakRSSKiB: daemon.peakRSSKiB)
        for outcome in outcomes {
            switch outcome {
            case .success(let (o, h)):
                histogram.add(h)
                figures.failed += o.failed
            case .failure(let error): figures.errors.append("\(error)")
            }
        }
        figures.histogram = histogram
        figures.achievedPerSecond = Double(histogram.totalCount) / elapsed
        return figures
    }
}

import ArgumentParser
import Foundation
import Synchronization

/// `definite-agent-bench`: measures the agent against this machine's own limits, in one run.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "definite-agent-bench",
        abstract: "Measure acknowledged intake against the raw SQLite limit of this machine.")

    @Option(help: "The definite-agent binary to start.")
    var binary = ".build/release/definite-agent"

    @Option(help: "Records per intake measurement.")
    var records = 1_000_000

    @Option(parsing: .upToNextOption, help: "Client counts to measure.")
    var clients: [Int] = [1, 8, 64]

    @Option(parsing: .upToNextOption, help: "Durability settings to measure.")
    var durability: [String] = ["full", "normal"]

    @Flag(help: "Small runs, to check the benchmark works (figures are not meaningful).")
    var quick = false

    func run() throws {
        let total = quick ? 50_000 : records
        let raw = try SQLiteLimit.measure(records: quick ? 50_000 : 500_000)
        print(String(format: "%-44@ %12.0f records/s", "raw SQLite limit (row per record, FULL)" as NSString, raw))
        for mode in durability {
            for n in clients {
                let daemon = try Daemon(binary: binary, durability: mode)
                defer { daemon.stop() }
                let perClient = total / n
                let start = Date()
                let outcome = Mutex<(failed: Int, errors: [String])>((0, []))
                let socket = daemon.socket
                DispatchQueue.concurrentPerform(iterations: n) { c in
                    do {
                        let f = try IntakeClient.run(socket: socket, first: c * perClient, count: perClient)
                        outcome.withLock { $0.failed += f }
                    } catch {
                        outcome.withLock { $0.errors.append("\(error)") }
                    }
                }
                let (failed, errors) = outcome.withLock { $0 }
                let elapsed = Date().timeIntervalSince(start)
                let rate = Double(perClient * n) / elapsed
                let label = "acked intake, \(n) client\(n == 1 ? "" : "s"), \(mode)"
                print(String(format: "%-44@ %12.0f records/s  %5.2fx raw  peak RSS %5.1f MiB%@",
                             label as NSString, rate, rate / raw, Double(daemon.peakRSSKiB) / 1024,
                             (failed > 0 || !errors.isEmpty ? "  FAILED \(failed) \(errors)" : "") as NSString))
            }
        }
    }
}

Bench.main()

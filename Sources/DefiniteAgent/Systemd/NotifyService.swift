import Foundation
import Logging
import ServiceLifecycle

/// Tells systemd how the daemon is doing (`Type=notify`):
///
/// - `READY=1` once the spool is open and recovered and the intake socket listens;
/// - `STATUS=` with pending rows, dead letters and the delivery state, every few seconds;
/// - `WATCHDOG=1` at half of `WatchdogSec=`, sent only while the spool writer and the delivery scheduler
///   both show progress or are idle, so a wedged thread stops the pings and systemd restarts the daemon;
/// - `STOPPING=1` as soon as a graceful shutdown begins.
struct NotifyService: Service {
    let notifier: SystemdNotifier
    let ready: AsyncStream<Void>
    let writer: SpoolWriter
    let scheduler: DeliveryScheduler
    let configuration: AgentConfiguration
    let logger: Logger

    /// How long the writer may go without a sign of life: a commit, or an idle wake-up (every second).
    static let writerStallLimit = Duration.seconds(5)

    /// Delivery workers can legitimately spend a whole HTTP timeout in one request.
    var schedulerStallLimit: Duration { configuration.api.timeout.duration + .seconds(15) }

    func run() async throws {
        guard notifier.isEnabled else {
            try? await gracefulShutdown()
            return
        }
        let stopping = StopFlag()
        await withGracefulShutdownHandler {
            var readiness = ready.makeAsyncIterator()
            guard await readiness.next() != nil, !stopping.isSet else { return }
            notifier.notify("READY=1\nSTATUS=\(statusLine())")
            logger.info("told systemd we are ready")
            let tick = notifier.watchdogInterval.map { min($0 / 2, .seconds(2)) } ?? .seconds(2)
            var sinceStatus = Duration.zero
            var wasHealthy = true
            while !stopping.isSet {
                try? await Task.sleep(for: tick)
                if stopping.isSet { break }
                let problem = health()
                if notifier.watchdogInterval != nil, problem == nil { notifier.notify("WATCHDOG=1") }
                if let problem, wasHealthy { logger.error("withholding watchdog pings: \(problem)") }
                wasHealthy = problem == nil
                sinceStatus += tick
                if sinceStatus >= .seconds(5) {
                    sinceStatus = .zero
                    notifier.notify("STATUS=\(problem.map { "stalled: \($0)" } ?? statusLine())")
                }
            }
        } onGracefulShutdown: {
            stopping.set()
            notifier.notify("STOPPING=1\nSTATUS=stopping: answering what was read, keeping undelivered rows in the spool")
        }
    }

    /// Why the daemon is not healthy, or `nil`.
    func health() -> String? {
        let writerSilence = writer.timeSinceHeartbeat
        if writerSilence > Self.writerStallLimit { return "the spool writer has shown no progress for \(writerSilence)" }
        let schedulerSilence = scheduler.timeSinceHeartbeat
        if schedulerSilence > schedulerStallLimit { return "delivery has shown no progress for \(schedulerSilence)" }
        return nil
    }

    func statusLine() -> String {
        guard let status = try? SpoolStatus.read(path: configuration.spool.path) else { return "running" }
        let states = Set(status.targets.filter { $0.pending > 0 }.compactMap(\.state))
        let delivery: String
        if states.contains("auth failing") {
            delivery = "auth failing"
        } else if let held = status.targets.first(where: { $0.pending > 0 && ($0.state ?? "").hasPrefix("held") }) {
            delivery = "\(held.table) \(held.state ?? "held")"
        } else if states.contains("backing off") {
            delivery = "backing off"
        } else {
            delivery = status.pending > 0 ? "delivering" : "idle"
        }
        return "\(status.pending) pending (\(ByteSize(bytes: status.pendingBytes))), \(status.deadLetters) dead letters, \(delivery)"
    }
}

/// A flag set once from the shutdown handler and read from the service loop.
private final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

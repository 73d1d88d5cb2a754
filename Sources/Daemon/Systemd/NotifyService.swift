import Core
import Delivery
import FoundationEssentials
import Glibc
import Logging
import NIOPosix
import ServiceLifecycle
import Spool

/// Tells systemd how the daemon is doing (`Type=notify`):
///
/// - `READY=1` when this part starts: it is the last part, so every configured listener accepts by then;
/// - `STATUS=` with pending rows, dead letters and the delivery state, every few seconds;
/// - `WATCHDOG=1` at half of `WatchdogSec=`, sent only while the spool writer and the delivery loop
///   both show progress or are idle, so a wedged thread stops the pings and systemd restarts the daemon;
/// - `STOPPING=1` as soon as a graceful shutdown begins (this part is the first to stop).
///
/// The status line reads the spool and the health check reads locked state: both run on a thread of this
/// part's own ("notify", ``Ticker``), never on the cooperative pool. It waits between ticks on a condition
/// variable rather than in a sleeping task: when this loop slept in a task, each tick started libdispatch
/// worker threads, and with them libdispatch's manager woke the daemon every second (measured with
/// `NOTIFY_SOCKET` set, i.e. under systemd; `Tests/Integration/test_idle.py`).
struct NotifyService: DaemonPart {
    let notifier: SystemdNotifier
    let writer: SpoolWriter
    let delivery: DeliveryLoop
    let configuration: AgentConfiguration
    let blocking: NIOThreadPool
    let logger: Logger

    /// How long the writer may go without a sign of life (a commit) while it has work; waiting for work
    /// is not silence.
    static let writerStallLimit = Duration.seconds(5)

    /// How often `STATUS=` is sent.
    static let statusInterval = Duration.seconds(5)

    /// The delivery loop goes round at least every few seconds, whatever its requests do; a margin of a
    /// whole HTTP timeout keeps a slow machine from being called wedged.
    var deliveryStallLimit: Duration { configuration.api.timeout.duration + .seconds(15) }

    func start() async throws -> any RunningPart {
        if notifier.isEnabled {
            let status = (try? await blocking.runIfActive { statusLine() }) ?? "running"
            notifier.notify("READY=1\nSTATUS=\(status)")
            logger.info("told systemd we are ready")
        }
        return Running(service: self)
    }

    private struct Running: RunningPart {
        let service: NotifyService

        func run(drainDeadline: DrainDeadline) async throws {
            let notifier = service.notifier
            guard notifier.isEnabled else {
                try? await gracefulShutdown()
                return
            }
            let ticker = Ticker(service: service)
            ticker.start()
            await withTaskCancellationOrGracefulShutdownHandler {
                _ = await ticker.ended.wait()
            } onCancelOrGracefulShutdown: {
                ticker.stop()
                notifier.notify("STOPPING=1\nSTATUS=stopping: answering what was read, keeping undelivered rows in the spool")
            }
        }
    }

    /// The thread that checks health and sends `WATCHDOG=1` at half the watchdog interval (at most every
    /// 2 s) when systemd watches, and `STATUS=` every ``statusInterval``; when systemd does not watch it
    /// wakes only for `STATUS=`.
    ///
    /// - Note: Thread confinement: the loop's state lives on the thread; `stopping` is guarded by
    ///   `condition`.
    final class Ticker: @unchecked Sendable {
        private let service: NotifyService
        private let condition = ConditionLock()
        private var stopping = false
        /// Signalled when the thread ended.
        let ended = CompletionSignal()

        init(service: NotifyService) {
            self.service = service
        }

        func start() {
            NamedThread.start("notify") { [self] in
                run()
                ended.signal()
            }
        }

        /// Ends the thread within a moment (it is waiting or checking health).
        func stop() {
            condition.withLock {
                stopping = true
                condition.signal()
            }
        }

        private func run() {
            let notifier = service.notifier
            let tick = notifier.watchdogInterval.map { min($0 / 2, .seconds(2)) } ?? NotifyService.statusInterval
            var sinceStatus = Duration.zero
            var wasHealthy = true
            while !waitOrStop(tick) {
                sinceStatus += tick
                let wantsStatus = sinceStatus >= NotifyService.statusInterval
                let problem = service.health()
                if notifier.watchdogInterval != nil, problem == nil { notifier.notify("WATCHDOG=1") }
                if let problem, wasHealthy { service.logger.error("withholding watchdog pings: \(problem)") }
                wasHealthy = problem == nil
                if wantsStatus {
                    sinceStatus = .zero
                    notifier.notify("STATUS=\(problem.map { "stalled: \($0)" } ?? service.statusLine())")
                }
            }
        }

        /// Waits `interval` unless stopped; returns whether it was stopped.
        private func waitOrStop(_ interval: Duration) -> Bool {
            condition.withLock {
                if !stopping { condition.wait(timeout: interval) }
                return stopping
            }
        }
    }

    /// Why the daemon is not healthy, or `nil`.
    func health() -> String? {
        let writerSilence = writer.timeSinceHeartbeat
        if writerSilence > Self.writerStallLimit { return "the spool writer has shown no progress for \(writerSilence)" }
        let deliverySilence = delivery.timeSinceHeartbeat
        if deliverySilence > deliveryStallLimit { return "delivery has shown no progress for \(deliverySilence)" }
        return nil
    }

    /// `STATUS=`: pending rows and bytes, dead letters, and the most pressing delivery state (the key
    /// refused, a table held, rows being isolated, a backoff), else delivering or idle.
    func statusLine() -> String {
        guard let status = try? SpoolStatus.read(path: configuration.spool.path) else { return "running" }
        let waiting = status.targets.filter { $0.pending > 0 }
        let kinds = Set(waiting.compactMap { $0.deliveryState?.kind })
        let delivery: String
        if kinds.contains(.authFailing) {
            delivery = TargetState.Kind.authFailing.rawValue
        } else if let held = waiting.first(where: { $0.deliveryState?.kind == .heldTableNotFound }) {
            delivery = "\(held.table) \(TargetState.Kind.heldTableNotFound.rawValue)"
        } else if let isolating = waiting.first(where: { $0.deliveryState?.kind == .isolating }) {
            delivery = "\(isolating.table) \(TargetState.Kind.isolating.rawValue)"
        } else if kinds.contains(.backingOff) {
            delivery = TargetState.Kind.backingOff.rawValue
        } else {
            delivery = (status.pending > 0 ? TargetState.Kind.delivering : .idle).rawValue
        }
        return "\(status.pending) pending (\(ByteSize(bytes: status.pendingBytes))), \(status.deadLetters) dead letters, \(delivery)"
    }
}

import Foundation
import Logging

/// Hands the ``DeliveryMachine``'s steps to the delivery workers and their outcomes back to it.
///
/// The machine decides; this type only owns the lock around it and the waiting. No I/O happens under the
/// lock: learning of new rows and targets (a read of the spool's `targets` table, every
/// ``refreshInterval``) is done by one worker at a time with the lock released, and its result applied
/// under it.
final class DeliveryScheduler: @unchecked Sendable {
    private let condition = NSCondition()
    private var machine: DeliveryMachine
    /// Read connection for the refresh; used by one worker at a time (`refreshing`).
    private let reader: SpoolReader
    private let settings: LiveConfiguration
    private let logger: Logger
    /// Whether there is an API key to send with; without one nothing is cut or sent.
    private let hasKey: @Sendable () -> Bool
    private var lastRefresh = ContinuousClock.now
    private var refreshing = false
    private var stopping = false
    private var busyWorkers = 0
    /// Monotonic time of the last progress or idle pass, for the watchdog.
    private var heartbeat = ContinuousClock.now

    static let refreshInterval = Duration.milliseconds(50)

    init(spoolPath: String, settings: LiveConfiguration, logger: Logger, hasKey: @escaping @Sendable () -> Bool = { true }) throws(SpoolError) {
        self.reader = try SpoolReader(path: spoolPath)
        self.settings = settings
        self.hasKey = hasKey
        self.logger = logger
        let restored: [DeliveryMachine.Restored]
        do {
            restored = try Self.restore(reader)
        } catch {
            throw SpoolDatabase.classify(error, path: spoolPath)
        }
        machine = DeliveryMachine(restoring: restored, settings: .init(settings.current), seed: UInt64.random(in: .min ... .max),
                                  now: Self.now())
        if machine.openBatchCount > 0 {
            logger.info("resuming batches left open by the previous run", metadata: ["batches": "\(machine.openBatchCount)"])
        }
    }

    /// Targets and open batches left by a previous run (open batches are resumed first, in seq order).
    private static func restore(_ reader: SpoolReader) throws(SQLiteError) -> [DeliveryMachine.Restored] {
        let open = try reader.openBatches()
        return try reader.targets().map { row throws(SQLiteError) in
            DeliveryMachine.Restored(row: row, assignedEnd: try reader.assignedEnd(targetID: row.id),
                                     batches: open.filter { $0.targetID == row.id })
        }
    }

    static func now() -> DeliveryMachine.Now {
        DeliveryMachine.Now(instant: .now, date: Date())
    }

    // MARK: Workers' side

    /// The next step for an idle worker, waiting until one is due; `nil` once stopping.
    func next() -> DeliveryMachine.Step? {
        condition.lock()
        defer { condition.unlock() }
        while !stopping {
            refreshIfDue()
            let now = Self.now()
            heartbeat = now.instant
            machine.reconfigure(.init(settings.current))
            if let step = machine.nextStep(now: now, hasKey: hasKey()) {
                busyWorkers += 1
                return step
            }
            let wake = min(machine.nextWakeUp(after: now) ?? now.instant + Self.refreshInterval, now.instant + Self.refreshInterval)
            _ = condition.wait(until: now.date.addingTimeInterval(max(0.001, (wake - now.instant).seconds)))
        }
        return nil
    }

    /// A worker's step returned `outcome`: its next step, or `nil` when it is free again.
    func complete(_ step: DeliveryMachine.Step, with outcome: DeliveryMachine.Outcome) -> DeliveryMachine.Step? {
        condition.lock()
        defer { condition.unlock() }
        let now = Self.now()
        let next = machine.complete(step, with: outcome, now: now)
        heartbeat = now.instant
        if next == nil { busyWorkers -= 1 }
        condition.broadcast()
        return next
    }

    /// Reads the targets' log ends with the lock released (one worker at a time), then applies them.
    /// Must be called with the lock held.
    private func refreshIfDue() {
        guard !refreshing, ContinuousClock.now - lastRefresh >= Self.refreshInterval else { return }
        refreshing = true
        condition.unlock()
        let rows = try? reader.targets()
        condition.lock()
        refreshing = false
        lastRefresh = .now
        if let rows { machine.observe(rows, now: Self.now()) }
    }

    // MARK: Control

    /// Makes everything pending eligible at once, ignoring linger and any backoff (SIGUSR1, SIGHUP).
    func flushNow() {
        condition.lock()
        defer { condition.unlock() }
        lastRefresh = ContinuousClock.now - Self.refreshInterval
        machine.flushNow()
        condition.broadcast()
    }

    /// Stops handing out steps; a worker still gets the record of an answer it holds.
    func stop() {
        condition.lock()
        stopping = true
        machine.stop()
        condition.broadcast()
        condition.unlock()
    }

    var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    /// Whether every worker is idle (waiting for work).
    var isIdle: Bool {
        condition.lock()
        defer { condition.unlock() }
        return busyWorkers == 0
    }

    var timeSinceHeartbeat: Duration {
        condition.lock()
        defer { condition.unlock() }
        return ContinuousClock.now - heartbeat
    }
}

import CAgentSupport
import Core
import Delivery
import FoundationEssentials
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// Operator signals other than the shutdown ones (SIGTERM and SIGINT are the daemon's, see ``AgentDaemon``):
///
/// - SIGHUP: read the configuration file and the API key again. Batch, retry, table, API and intake
///   settings take effect at once (intake settings for new connections); settings only a restart can
///   change (spool, socket path and mode, `max_in_flight`, drain bound, log level) keep their old values and
///   are logged as such. An invalid file, or one whose API key cannot be read, is rejected with a log line
///   and the old configuration and key keep running. Only a new key or changed `[api]` settings end the
///   waits of delivery (a backoff, `Retry-After`, linger): a reload that changes neither leaves them as
///   they are. systemd hears `RELOADING=1` and then `READY=1` (not once the daemon is stopping).
/// - SIGUSR1: deliver everything pending now, ignoring `[batch] linger` and any backoff.
///
/// Reloading reads files: it runs on a thread of its own (``SignalHandling``), never awaited, so a
/// reload stuck on a file (a hung mount) cannot hold the daemon's stop.
struct SignalService: DaemonPart {
    let configurationPath: String?
    let settings: LiveConfiguration
    let key: APIKeyBox
    let delivery: DeliveryLoop
    let notifier: SystemdNotifier
    /// Whether the daemon told systemd it is ready and is not stopping: a SIGHUP before that (replayed from
    /// start-up) or during the stop reloads without `RELOADING=1`/`READY=1`, which would announce the
    /// daemon ready before every part is up, or again after `STOPPING=1`.
    let isReady: @Sendable () -> Bool
    let logger: Logger

    /// Test hook (`DEFINITE_AGENT_TEST_RELOAD_DELAY_MS`): each SIGHUP's reload first waits this long, as a
    /// read from a hung mount would, to show the stop does not wait for it.
    static let testReloadDelay: Duration? = ProcessInfo.processInfo.environment["DEFINITE_AGENT_TEST_RELOAD_DELAY_MS"]
        .flatMap(Int.init).map { .milliseconds($0) }

    /// Traps the signals (from here on a SIGHUP no longer waits, blocked, for the daemon to be up).
    func start() async throws -> any RunningPart {
        Running(service: self, signals: await UnixSignalsSequence(trapping: .sighup, .sigusr1))
    }

    private struct Running: RunningPart {
        let service: SignalService
        let signals: UnixSignalsSequence

        func run(drainDeadline: DrainDeadline) async throws {
            let handling = SignalHandling { signal in service.handle(signal) }
            // One that came during start-up, caught until now (see AgentDaemon.catchEarlySignals()).
            for (number, signal) in [(SIGHUP, UnixSignal.sighup), (SIGUSR1, .sigusr1)] where cagent_take_early_signal(number) != 0 {
                handling.submit(signal)
            }
            for await signal in signals.cancelOnGracefulShutdown() {
                handling.submit(signal)
            }
        }
    }

    /// Handles signals one at a time, in the order they came, on a thread started for them (`signals`) and
    /// ended when none waits. Submitting never waits, and the daemon's stop does not wait for the thread:
    /// the SIGHUP handling was awaited in the part, and a reload stuck reading a file kept the part from
    /// stopping, so every listener went on accepting until the process was killed 21 s later.
    private final class SignalHandling: Sendable {
        private let handle: @Sendable (UnixSignal) -> Void
        private let queue = Mutex<(waiting: [UnixSignal], running: Bool)>(([], false))

        init(_ handle: @escaping @Sendable (UnixSignal) -> Void) {
            self.handle = handle
        }

        func submit(_ signal: UnixSignal) {
            let start = queue.withLock { queue in
                queue.waiting.append(signal)
                defer { queue.running = true }
                return !queue.running
            }
            guard start else { return }
            NamedThread.start("signals") { [self] in
                while let next = queue.withLock({ queue -> UnixSignal? in
                    guard !queue.waiting.isEmpty else {
                        queue.running = false
                        return nil
                    }
                    return queue.waiting.removeFirst()
                }) {
                    handle(next)
                }
            }
        }
    }

    private func handle(_ signal: UnixSignal) {
        switch signal {
        case .sighup:
            let tellSystemd = isReady()
            if tellSystemd { notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())") }
            if let delay = Self.testReloadDelay { NamedThread.sleep(for: delay) }
            reload()
            if tellSystemd { notifier.notify("READY=1") }
        case .sigusr1:
            logger.info("SIGUSR1: delivering everything pending now")
            delivery.flushNow()
        default:
            break
        }
    }

    func reload() {
        var configuration = settings.current
        // Started on the embedded defaults, the daemon reads the default file once it exists, as a
        // restart would.
        let configurationPath =
            configurationPath
            ?? (FileManager.default.fileExists(atPath: ConfigurationLoader.defaultPath) ? ConfigurationLoader.defaultPath : nil)
        if let configurationPath {
            do {
                configuration = try ConfigurationLoader.load(path: configurationPath)
            } catch {
                logger.error(
                    "SIGHUP: cannot use the configuration file; the old configuration keeps running", metadata: ["error": "\(error)"])
                return
            }
        } else {
            logger.info(
                "SIGHUP: no configuration file (no --config, and \(ConfigurationLoader.defaultPath) does not exist); the embedded defaults stay"
            )
        }
        // The key the new configuration names is read before anything of it applies: a file whose key
        // cannot be read is rejected whole, as `config check` and a restart would reject it.
        let fresh: APIKey?
        do {
            fresh = try APIKeySource.load(config: configuration.api)
        } catch {
            logger.error(
                configurationPath == nil
                    ? "SIGHUP: cannot read the API key; keeping the one in use"
                    : "SIGHUP: cannot read the API key the new configuration names; the old configuration and key keep running",
                metadata: ["error": "\(error)"])
            return
        }
        var apiChanged = false
        if configurationPath != nil {
            let outcome = settings.reload(configuration)
            if !outcome.needRestart.isEmpty {
                logger.warning(
                    "SIGHUP: these settings changed but take effect only after a restart; their old values stay in force",
                    metadata: ["keys": "\(outcome.needRestart.joined(separator: ", "))"])
            }
            logger.info(
                "SIGHUP: configuration reloaded",
                metadata: ["applied": "\(outcome.applied.isEmpty ? "nothing changed" : outcome.applied.joined(separator: ", "))"])
            apiChanged = outcome.applied.contains { $0.hasPrefix("api.") }
        }
        let keyChanged = key.withLockedValue { held in
            defer { held = fresh }
            return held != fresh
        }
        if let fresh {
            logger.info("SIGHUP: API key reloaded", metadata: ["source": "\(fresh.source)", "changed": "\(keyChanged)"])
        } else {
            logger.warning("SIGHUP: no API key found; delivery stays paused")
        }
        // What waits on a refused key or an old API setting may go now; a reload that changed neither
        // leaves backoffs, the API's Retry-After and linger alone (only SIGUSR1 overrides them).
        if keyChanged || apiChanged { delivery.flushNow() } else { delivery.configurationReloaded() }
    }
}

import Logging
import ServiceLifecycle
import UnixSignals

/// Operator signals other than the shutdown ones (SIGTERM and SIGINT belong to the service group):
///
/// - SIGHUP: read the API key again (a new key takes effect without a restart). A key that cannot be
///   read keeps the old one in use and says why.
/// - SIGUSR1: deliver everything pending now, ignoring `[batch] linger` and any backoff.
struct SignalService: Service {
    let configuration: AgentConfiguration
    let key: APIKeyBox
    let scheduler: DeliveryScheduler
    let notifier: SystemdNotifier
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup, .sigusr1)
        await withGracefulShutdownHandler {
            for await signal in signals.cancelOnGracefulShutdown() {
                switch signal {
                case .sighup:
                    notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())")
                    reloadKey()
                    notifier.notify("READY=1")
                case .sigusr1:
                    logger.info("SIGUSR1: delivering everything pending now")
                    scheduler.flushNow()
                default: break
                }
            }
        } onGracefulShutdown: {}
    }

    func reloadKey() {
        do {
            let fresh = try APIKeySource.load(config: configuration.api)
            key.withLockedValue { $0 = fresh }
            if let fresh {
                logger.info("SIGHUP: API key reloaded", metadata: ["source": "\(fresh.source)"])
                // Whatever waits on a refused key may go now.
                scheduler.flushNow()
            } else {
                logger.warning("SIGHUP: no API key found; delivery stays paused")
            }
        } catch {
            logger.error("SIGHUP: cannot read the API key; keeping the one in use", metadata: ["error": "\(error)"])
        }
    }
}

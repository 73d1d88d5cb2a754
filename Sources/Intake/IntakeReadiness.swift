import Core
import Spool
import Synchronization

/// Whether the daemon takes records now, for `GET /readyz` (Kubernetes readiness probes, load balancer
/// checks): the spool is open, the intake listeners are up, intake is not refused for want of room, and
/// the daemon is not stopping. `GET /healthz` only says the process answers.
///
/// Made once the spool is open; the daemon marks it ``markListening()`` when the line socket accepts
/// (the moment systemd hears READY=1) and ``markStopping()`` when a graceful shutdown begins.
public final class IntakeReadiness: Sendable {
    /// The answer to a readiness probe.
    public enum State: Sendable, Equatable {
        case ready
        case notReady(String)
    }

    private struct Flags {
        var listening = false
        var stopping = false
    }

    private let capacity: SpoolCapacity
    private let flags = Mutex(Flags())

    public init(capacity: SpoolCapacity) {
        self.capacity = capacity
    }

    /// The intake listeners accept connections.
    public func markListening() {
        flags.withLock { $0.listening = true }
    }

    /// A graceful shutdown began: no longer ready, whatever else holds.
    public func markStopping() {
        flags.withLock { $0.stopping = true }
    }

    public var state: State {
        let flags = flags.withLock { $0 }
        if flags.stopping { return .notReady("stopping") }
        if !flags.listening { return .notReady("starting: the intake listeners are not up yet") }
        if let refusal = capacity.refusal { return .notReady("intake refused: \(refusal.summary)") }
        return .ready
    }
}

/// The answers of `GET /healthz` and `GET /readyz`, the same on the local Stream API and on the metrics
/// listener: a status code and a small JSON body.
package enum HealthEndpoint {
    /// The answer for `path`, or `nil` when `path` is not a health endpoint.
    package static func answer(path: String, readiness: IntakeReadiness?) -> (status: Int, body: String)? {
        switch path {
        case "/healthz":
            return (200, "{\"status\":\"alive\"}\n")
        case "/readyz":
            switch readiness?.state ?? .notReady("starting") {
            case .ready: return (200, "{\"status\":\"ready\"}\n")
            case .notReady(let reason): return (503, "{\"status\":\"not ready\",\"reason\":\(JSONCompactor.quote(reason))}\n")
            }
        default:
            return nil
        }
    }
}

import Core
import Metrics

extension AgentMetrics {
    /// 1 while intake is refused for want of room, by reason (`max_bytes`, `disk_reserve`); else 0.
    package static func intakeRefusing(_ reason: IntakeRefusal.Reason) -> Gauge {
        Gauge(label: "definite_agent_intake_refusing", dimensions: [("reason", reason.rawValue)])
    }
}

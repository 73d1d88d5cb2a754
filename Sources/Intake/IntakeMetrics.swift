import Core
import Metrics

extension AgentMetrics {
    /// Requests refused at intake, by reason code (`invalid_json`, `spool_full`, …).
    package static func rejected(_ code: IntakeRejection.Code) -> Counter {
        Counter(label: "definite_agent_intake_rejected_total", dimensions: [("reason", code.rawValue)])
    }
}

import Core
import Intake
import Metrics
import Spool

extension AgentMetrics {
    /// Makes every counter and labelled gauge a dashboard or alert relies on appear at once, at 0 (a
    /// Prometheus `rate()` or `absent()` alert needs the series before its first event), and records the
    /// build and `max_bytes`. Call once metrics are bootstrapped.
    static func announce(spoolMaxBytes limit: Int) {
        for code in IntakeRejection.Code.all { rejected(code).increment(by: 0) }
        for counter in [
            linesReceived, recordsSpooled, retries, recordsDelivered, recordsDeadLettered,
            datagramsReceived, datagramsRejected, datagramsDropped, bytesUncompressed, bytesSent,
        ] {
            counter.increment(by: 0)
        }
        // The statuses the reference documents, and no answer at all; others appear when they first come.
        for status in ["200", "400", "401", "404", "413", "422", "429", "500", "503", "transport_error"] {
            httpRequests(status).increment(by: 0)
        }
        // A timer's histogram is made with the timer, empty: it is there before the first observation.
        _ = (ackLatency, deliveryLatency)
        for reason in IntakeRefusal.Reason.allCases { intakeRefusing(reason).record(0) }
        spoolMaxBytes.record(limit)
        buildInfo.record(1)
    }
}

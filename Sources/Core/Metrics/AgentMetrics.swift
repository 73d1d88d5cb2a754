import Metrics

/// The agent's instruments (swift-metrics). They do nothing until a backend is bootstrapped, which the
/// daemon does only when `[metrics] listen` is set (see ``MetricsServer``).
///
/// Hot paths update them once per read burst or per batch, never per record. Instruments labelled by a
/// layer's own vocabulary are declared in that layer (`rejected` in Intake, `intakeRefusing` in Spool);
/// the daemon announces them all (`announce`).
package enum AgentMetrics {
    /// Lines read from intake connections.
    package static let linesReceived = Counter(label: "definite_agent_intake_lines_total")
    /// Records made durable in the spool.
    package static let recordsSpooled = Counter(label: "definite_agent_records_spooled_total")
    /// Datagram intake, by outcome: `received`, `rejected` (invalid), `dropped` (valid but not stored).
    package static let datagramsReceived = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "received")])
    package static let datagramsRejected = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "rejected")])
    package static let datagramsDropped = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "dropped")])
    /// From the first line of a burst to its replies being written.
    package static let ackLatency = Timer(label: "definite_agent_ack_latency_seconds", preferredDisplayUnit: .seconds)

    /// HTTP requests to the API, by status code (`transport_error` when there was no answer).
    package static func httpRequests(_ status: String) -> Counter {
        Counter(label: "definite_agent_http_requests_total", dimensions: [("status", status)])
    }
    package static let retries = Counter(label: "definite_agent_delivery_retries_total")
    package static let recordsDelivered = Counter(label: "definite_agent_records_delivered_total")
    package static let recordsDeadLettered = Counter(label: "definite_agent_records_dead_lettered_total")
    package static let bytesUncompressed = Counter(label: "definite_agent_request_bytes_total", dimensions: [("stage", "uncompressed")])
    package static let bytesSent = Counter(label: "definite_agent_request_bytes_total", dimensions: [("stage", "sent")])
    /// One HTTP request to the API, answer included.
    package static let deliveryLatency = Timer(label: "definite_agent_delivery_latency_seconds", preferredDisplayUnit: .seconds)

    /// Bytes the spool holds (pending plus dead letters), against `[spool] max_bytes`.
    package static let spoolBytes = Gauge(label: "definite_agent_spool_bytes")
    /// `[spool] max_bytes`, to alert on `spool_bytes / spool_max_bytes`.
    package static let spoolMaxBytes = Gauge(label: "definite_agent_spool_max_bytes")
    /// Always 1; the labels say which build runs.
    package static let buildInfo = Gauge(
        label: "definite_agent_build_info", dimensions: [("version", AgentVersion.current), ("commit", AgentVersion.commit)])

    package static func pendingRows(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_pending_rows", dimensions: [("table", table)])
    }
    package static func oldestPendingAge(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_oldest_pending_age_seconds", dimensions: [("table", table)])
    }
    package static func deadLetters(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_dead_letters", dimensions: [("table", table)])
    }
}

extension Timer {
    /// Records the time elapsed since `start` on the monotonic clock.
    package func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}

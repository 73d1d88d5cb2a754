import Metrics

/// The agent's instruments (swift-metrics). They do nothing until a backend is bootstrapped, which the
/// daemon does only when `[metrics] listen` is set (see ``MetricsServer``).
///
/// Hot paths update them once per read burst or per batch, never per record.
enum AgentMetrics {
    /// Lines read from intake connections.
    static let linesReceived = Counter(label: "definite_agent_intake_lines_total")
    /// Records made durable in the spool.
    static let recordsSpooled = Counter(label: "definite_agent_records_spooled_total")
    /// Requests refused at intake, by reason code (`invalid_json`, `spool_full`, …).
    static func rejected(_ code: IntakeRejection.Code) -> Counter {
        Counter(label: "definite_agent_intake_rejected_total", dimensions: [("reason", code.rawValue)])
    }
    /// Datagram intake, by outcome: `received`, `rejected` (invalid), `dropped` (valid but not stored).
    static let datagramsReceived = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "received")])
    static let datagramsRejected = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "rejected")])
    static let datagramsDropped = Counter(label: "definite_agent_datagrams_total", dimensions: [("outcome", "dropped")])
    /// From the first line of a burst to its replies being written.
    static let ackLatency = Timer(label: "definite_agent_ack_latency_seconds", preferredDisplayUnit: .seconds)

    /// HTTP requests to the API, by status code (`transport_error` when there was no answer).
    static func httpRequests(_ status: String) -> Counter {
        Counter(label: "definite_agent_http_requests_total", dimensions: [("status", status)])
    }
    static let retries = Counter(label: "definite_agent_delivery_retries_total")
    static let recordsDelivered = Counter(label: "definite_agent_records_delivered_total")
    static let recordsDeadLettered = Counter(label: "definite_agent_records_dead_lettered_total")
    static let bytesUncompressed = Counter(label: "definite_agent_request_bytes_total", dimensions: [("stage", "uncompressed")])
    static let bytesSent = Counter(label: "definite_agent_request_bytes_total", dimensions: [("stage", "sent")])
    /// One HTTP request to the API, answer included.
    static let deliveryLatency = Timer(label: "definite_agent_delivery_latency_seconds", preferredDisplayUnit: .seconds)

    /// Bytes the spool holds (pending plus dead letters), against `[spool] max_bytes`.
    static let spoolBytes = Gauge(label: "definite_agent_spool_bytes")
    /// `[spool] max_bytes`, to alert on `spool_bytes / spool_max_bytes`.
    static let spoolMaxBytes = Gauge(label: "definite_agent_spool_max_bytes")
    /// 1 while intake is refused for want of room, by reason (`max_bytes`, `disk_reserve`); else 0.
    static func intakeRefusing(_ reason: IntakeRefusal.Reason) -> Gauge {
        Gauge(label: "definite_agent_intake_refusing", dimensions: [("reason", reason.rawValue)])
    }
    /// Always 1; the labels say which build runs.
    static let buildInfo = Gauge(label: "definite_agent_build_info", dimensions: [("version", AgentVersion.current), ("commit", AgentVersion.commit)])

    /// Makes every counter and labelled gauge a dashboard or alert relies on appear at once, at 0 (a
    /// Prometheus `rate()` or `absent()` alert needs the series before its first event), and records the
    /// build and `max_bytes`. Call once metrics are bootstrapped.
    static func announce(spoolMaxBytes limit: Int) {
        for code in IntakeRejection.Code.all { rejected(code).increment(by: 0) }
        for counter in [linesReceived, recordsSpooled, retries, recordsDelivered, recordsDeadLettered,
                        datagramsReceived, datagramsRejected, datagramsDropped, bytesUncompressed, bytesSent] {
            counter.increment(by: 0)
        }
        for reason in IntakeRefusal.Reason.allCases { intakeRefusing(reason).record(0) }
        spoolMaxBytes.record(limit)
        buildInfo.record(1)
    }
    static func pendingRows(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_pending_rows", dimensions: [("table", table)])
    }
    static func oldestPendingAge(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_oldest_pending_age_seconds", dimensions: [("table", table)])
    }
    static func deadLetters(_ table: String) -> Gauge {
        Gauge(label: "definite_agent_dead_letters", dimensions: [("table", table)])
    }
}

extension Timer {
    /// Records the time elapsed since `start` on the monotonic clock.
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}

import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The metrics tests, one at a time: the scrape (``MetricsHTTPHandlerTests``) refreshes the same
/// process-wide gauges whose rendering ``MetricsRenderingTests`` checks.
@Suite("Metrics", .serialized)
enum MetricsSuites {}

/// swift-metrics takes one backend per process: the daemon's own (``MetricsServer/bootstrap()``), made
/// once, the first time a test needs it.
enum ProcessMetrics {
    static let registry: PrometheusCollectorRegistry = MetricsServer.bootstrap()
}

extension MetricsSuites {
    /// What the Prometheus endpoint renders for the agent's instruments, with the daemon's factory.
    ///
    /// Instruments held in `static let`s (``AgentMetrics/linesReceived`` …) take the backend in place
    /// when first used, which other suites of this process may do before this one bootstraps: only
    /// instruments made at the call (labelled ones) or used by nothing but the code under test here are
    /// checked line by line.
    @Suite("Prometheus rendering")
    struct MetricsRenderingTests {
        /// Bootstraps the process's metrics, if no test did yet, before each test body runs.
        let registry = ProcessMetrics.registry

        var rendered: [String] {
            registry.emitToString().split(separator: "\n").map(String.init)
        }

        /// The sample lines of `name` (with labels, if any), value excluded, mapped to their values.
        func samples(_ name: String) -> [String: String] {
            var samples: [String: String] = [:]
            for line in rendered where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
                guard let space = line.lastIndex(of: " ") else { continue }
                samples[String(line[..<space])] = String(line[line.index(after: space)...])
            }
            return samples
        }

        func type(of name: String) -> [String] {
            rendered.filter { $0.hasPrefix("# TYPE \(name) ") }
        }

        @Test func announcingMakesTheSeriesAlertsNeedAppearWithTheirTypes() {
            AgentMetrics.announce(spoolMaxBytes: 123_456_789)

            #expect(type(of: "definite_agent_intake_rejected_total") == ["# TYPE definite_agent_intake_rejected_total counter"])
            let rejected = samples("definite_agent_intake_rejected_total")
            for code in IntakeRejection.Code.all {
                // Present from the start; other suites may count refusals meanwhile, so only the form is fixed.
                let value = rejected["definite_agent_intake_rejected_total{reason=\"\(code)\"}"]
                #expect(value.flatMap(Int.init).map { $0 >= 0 } == true, "reason \(code): \(value ?? "missing")")
            }

            #expect(type(of: "definite_agent_intake_refusing") == ["# TYPE definite_agent_intake_refusing gauge"])
            #expect(
                samples("definite_agent_intake_refusing") == [
                    #"definite_agent_intake_refusing{reason="max_bytes"}"#: "0.0",
                    #"definite_agent_intake_refusing{reason="disk_reserve"}"#: "0.0",
                    #"definite_agent_intake_refusing{reason="spool_file_gone"}"#: "0.0",
                ])
            #expect(type(of: "definite_agent_spool_max_bytes") == ["# TYPE definite_agent_spool_max_bytes gauge"])
            #expect(samples("definite_agent_spool_max_bytes") == ["definite_agent_spool_max_bytes": "123456789.0"])
            #expect(type(of: "definite_agent_build_info") == ["# TYPE definite_agent_build_info gauge"])
            #expect(
                samples("definite_agent_build_info") == [
                    "definite_agent_build_info{version=\"\(AgentVersion.current)\",commit=\"\(AgentVersion.commit)\"}": "1.0"
                ])
        }

        @Test func aRefusalGaugeFollowsWhatItIsToldAndRefusalsAreCountedByReason() {
            AgentMetrics.intakeRefusing(.diskReserve).record(1)
            #expect(samples("definite_agent_intake_refusing")[#"definite_agent_intake_refusing{reason="disk_reserve"}"#] == "1.0")
            AgentMetrics.intakeRefusing(.diskReserve).record(0)
            #expect(samples("definite_agent_intake_refusing")[#"definite_agent_intake_refusing{reason="disk_reserve"}"#] == "0.0")

            // Other suites may count this reason too: what these add is what is checked.
            let reason = IntakeRejection.Code.methodNotAllowed
            let series = #"definite_agent_intake_rejected_total{reason="method_not_allowed"}"#
            let before = samples("definite_agent_intake_rejected_total")[series].flatMap { Int($0) } ?? 0
            AgentMetrics.rejected(reason).increment(by: 2)
            AgentMetrics.rejected(reason).increment()
            #expect(samples("definite_agent_intake_rejected_total")[series] == String(before + 3))
        }

        @Test func aScrapeRefreshesPerTableGaugesFromTheSpool() async throws {
            let spool = try TestSpool("metrics-render")
            defer { spool.shutDown() }
            let suffix = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
            let (first, second) = ("metrics.first_\(suffix)", "metrics.second_\(suffix)")
            var parser = IntakeLineParser(configuration: AgentConfiguration())
            var batch = SpoolBatch()
            for line in [
                #"{"config":{"table":"\#(first)"},"data":[{"a":1},{"a":2},{"a":3}]}"#,
                #"{"config":{"table":"\#(second)"},"data":{"b":1}}"#,
            ] {
                let parsed = parser.parse(line: Array(line.utf8), into: &batch)
                if case .failure(let rejection) = parsed.result { Issue.record("\(rejection)") }
            }
            try await spool.writer.spoolAndWait(batch)

            MetricsServer.refreshGauges(spoolPath: spool.path, capacity: spool.writer.capacity)

            #expect(type(of: "definite_agent_pending_rows") == ["# TYPE definite_agent_pending_rows gauge"])
            let pending = samples("definite_agent_pending_rows")
            #expect(pending["definite_agent_pending_rows{table=\"\(first)\"}"] == "3.0")
            #expect(pending["definite_agent_pending_rows{table=\"\(second)\"}"] == "1.0")
            let dead = samples("definite_agent_dead_letters")
            #expect(dead["definite_agent_dead_letters{table=\"\(first)\"}"] == "0.0")
            #expect(dead["definite_agent_dead_letters{table=\"\(second)\"}"] == "0.0")
            let age = samples("definite_agent_oldest_pending_age_seconds")["definite_agent_oldest_pending_age_seconds{table=\"\(first)\"}"]
            #expect(age.flatMap(Double.init).map { $0 >= 0 && $0 < 60 } == true, "oldest age: \(age ?? "missing")")
            #expect(type(of: "definite_agent_oldest_pending_age_seconds") == ["# TYPE definite_agent_oldest_pending_age_seconds gauge"])
            #expect(spool.writer.capacity.usedBytes > 0)
            #expect(samples("definite_agent_spool_bytes") == ["definite_agent_spool_bytes": "\(Double(spool.writer.capacity.usedBytes))"])
        }

        @Test func latenciesAreHistogramsWithTheDaemonsBucketsInSeconds() {
            let timer = Timer(label: "definite_agent_test_latency_seconds", preferredDisplayUnit: .seconds)
            timer.recordNanoseconds(3_000_000)  // 3 ms
            timer.recordNanoseconds(3_000_000)
            timer.recordNanoseconds(2_000_000_000)  // 2 s

            #expect(type(of: "definite_agent_test_latency_seconds") == ["# TYPE definite_agent_test_latency_seconds histogram"])
            let lines = rendered.filter { $0.hasPrefix("definite_agent_test_latency_seconds") }
            #expect(
                lines == [
                    #"definite_agent_test_latency_seconds_bucket{le="0.00025"} 0"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.001"} 0"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.002"} 0"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.005"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.01"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.025"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.05"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.1"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.25"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="0.5"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="1.0"} 2"#,
                    #"definite_agent_test_latency_seconds_bucket{le="5.0"} 3"#,
                    #"definite_agent_test_latency_seconds_bucket{le="30.0"} 3"#,
                    #"definite_agent_test_latency_seconds_bucket{le="+Inf"} 3"#,
                    #"definite_agent_test_latency_seconds_sum 2.006"#,
                    #"definite_agent_test_latency_seconds_count 3"#,
                ])
        }

        @Test func anIntervalIsRecordedFromItsStartOnTheMonotonicClock() {
            let timer = Timer(label: "definite_agent_test_interval_seconds", preferredDisplayUnit: .seconds)
            timer.recordInterval(since: ContinuousClock.now - .seconds(10))

            let buckets = samples("definite_agent_test_interval_seconds_bucket")
            #expect(buckets[#"definite_agent_test_interval_seconds_bucket{le="5.0"}"#] == "0")
            #expect(buckets[#"definite_agent_test_interval_seconds_bucket{le="30.0"}"#] == "1")
            let sum = samples("definite_agent_test_interval_seconds_sum")["definite_agent_test_interval_seconds_sum"].flatMap(Double.init)
            #expect(sum.map { $0 >= 10 && $0 < 30 } == true, "sum: \(String(describing: sum))")
        }
    }
}

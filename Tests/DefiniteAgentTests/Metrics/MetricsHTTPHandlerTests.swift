import Foundation
import Glibc
import Logging
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

extension MetricsSuites {
    /// The metrics endpoint's connections: the pipeline ``MetricsServer`` installs (its handler is private to
    /// it), served on a Unix socket in a temporary directory, with a registry of the test's own so that what
    /// a scrape renders is known.
    @Suite("Metrics HTTP handler")
    struct MetricsHTTPHandlerTests {
        struct Served {
            let path: String
            let group: MultiThreadedEventLoopGroup
            let blocking: NIOThreadPool
            let channel: any Channel

            init(registry: PrometheusCollectorRegistry, spool: TestSpool, readiness: IntakeReadiness?) async throws {
                // A scrape refreshes the agent's own gauges (into whatever backend is in place): bootstrap
                // the process's first, so that the instruments it makes then are the ones rendered later.
                _ = ProcessMetrics.registry
                path = try makeTemporaryDirectory("metrics") + "/metrics.sock"
                group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                blocking = NIOThreadPool(numberOfThreads: 1)
                blocking.start()
                let server = MetricsServer(
                    registry: registry, spoolPath: spool.path, capacity: spool.writer.capacity,
                    blocking: blocking, readiness: readiness)
                channel = try await server.configure(ServerBootstrap(group: group)).bind(unixDomainSocketPath: path).get()
            }

            func stop() async throws {
                try await channel.close()
                try await group.shutdownGracefully()
                try? await blocking.shutdownGracefully()
            }
        }

        static func get(_ path: String, method: String = "GET", version: String = "HTTP/1.1") -> String {
            "\(method) \(path) \(version)\r\nHost: localhost\r\n\r\n"
        }

        /// Waits for the next complete response on `client` (`pending` holds what came after the last one).
        func response(_ client: borrowing UnixClient, pending: inout [UInt8]) throws -> HTTPTestResponse {
            let more = client.receive { HTTPTestResponse.parse(pending + $0) != nil }
            pending += more.bytes
            let (response, length) = try #require(HTTPTestResponse.parse(pending), "no complete response: \(pending.text)")
            pending.removeFirst(length)
            return response
        }

        @Test func bytesThatAreNotHTTPAre400AndTheConnectionCloses() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let served = try await Served(registry: PrometheusCollectorRegistry(), spool: spool, readiness: nil)
            let client = try UnixClient(path: served.path)
            try client.send("{\"not\":\"http\"}\r\n\r\n")
            let answer = client.receive()
            #expect(answer.closed, "the connection stayed open after the 400")
            let (response, _) = try #require(HTTPTestResponse.parse(answer.bytes), "no response: \(answer.bytes.text)")
            #expect(response.status == 400 && response.header("Connection") == "close")
            try await served.stop()
        }

        @Test func getMetricsRendersTheRegistryAsPrometheusText() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let registry = PrometheusCollectorRegistry()
            let scrapes = registry.makeCounter(
                descriptor: MetricNameDescriptor(metricName: "test_scrapes", unitName: "total", helpText: "Scrapes seen."))
            scrapes.increment(by: Int64(3))
            registry.makeGauge(
                descriptor: MetricNameDescriptor(metricName: "test_level", unitName: "", helpText: ""), labels: [("kind", "x")]
            ).set(1.5)
            let served = try await Served(registry: registry, spool: spool, readiness: nil)

            let client = try UnixClient(path: served.path)
            var pending: [UInt8] = []
            try client.send(Self.get("/metrics"))
            let scrape = try response(client, pending: &pending)
            #expect(scrape.status == 200)
            #expect(scrape.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8")
            let lines = scrape.body.text.split(separator: "\n").map(String.init)
            #expect(lines.contains("# HELP test_scrapes_total Scrapes seen."))
            #expect(lines.contains("# TYPE test_scrapes_total counter"))
            #expect(lines.contains("test_scrapes_total 3"))
            #expect(lines.contains("# TYPE test_level gauge"))
            #expect(lines.contains(#"test_level{kind="x"} 1.5"#))
            #expect(lines.count == 5, "\(lines)")

            // The connection is kept: a second scrape sees the counter moved; a query string is ignored.
            scrapes.increment()
            try client.send(Self.get("/metrics?name[]=x"))
            let second = try response(client, pending: &pending)
            #expect(second.status == 200)
            #expect(second.body.text.split(separator: "\n").contains("test_scrapes_total 4"))
            try await served.stop()
        }

        @Test func otherPathsAndMethodsAre404() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let served = try await Served(registry: PrometheusCollectorRegistry(), spool: spool, readiness: nil)

            let client = try UnixClient(path: served.path)
            var pending: [UInt8] = []
            for request in [
                Self.get("/"), Self.get("/metrics/x"), Self.get("/metrics", method: "POST"), Self.get("/healthz", method: "POST"),
            ] {
                try client.send(request)
                let answer = try response(client, pending: &pending)
                #expect(answer.status == 404, "\(request)")
                #expect(answer.header("Content-Type") == "text/plain")
                #expect(answer.body.text == "not found: try GET /metrics, /healthz or /readyz\n")
            }
            try await served.stop()
        }

        @Test func probesAnswerHealthAndReadiness() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let readiness = IntakeReadiness(capacity: spool.writer.capacity)
            let served = try await Served(registry: PrometheusCollectorRegistry(), spool: spool, readiness: readiness)

            let client = try UnixClient(path: served.path)
            var pending: [UInt8] = []
            try client.send(Self.get("/healthz"))
            let alive = try response(client, pending: &pending)
            #expect(alive.status == 200)
            #expect(alive.header("Content-Type") == "application/json")
            #expect(alive.body.text == "{\"status\":\"alive\"}\n")

            readiness.markListening()
            try client.send(Self.get("/readyz"))
            #expect(try response(client, pending: &pending).body.text == "{\"status\":\"ready\"}\n")
            readiness.markStopping()
            try client.send(Self.get("/readyz"))
            let stopping = try response(client, pending: &pending)
            #expect(stopping.status == 503)
            #expect(stopping.body.text == "{\"status\":\"not ready\",\"reason\":\"stopping\"}\n")
            try await served.stop()
        }

        @Test func aRequestWithoutKeepAliveIsAnsweredThenClosed() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let served = try await Served(registry: PrometheusCollectorRegistry(), spool: spool, readiness: nil)

            let client = try UnixClient(path: served.path)
            try client.send(Self.get("/healthz", version: "HTTP/1.0"))
            let all = client.receive()
            #expect(all.closed)
            let (answer, length) = try #require(HTTPTestResponse.parse(all.bytes))
            #expect(answer.status == 200)
            #expect(length == all.bytes.count)
            try await served.stop()
        }

        @Test func aScrapeWhileTheBlockingPoolIsStoppingIs503() async throws {
            let spool = try TestSpool("metrics-http")
            defer { spool.shutDown() }
            let served = try await Served(registry: PrometheusCollectorRegistry(), spool: spool, readiness: nil)
            try await served.blocking.shutdownGracefully()

            let client = try UnixClient(path: served.path)
            var pending: [UInt8] = []
            try client.send(Self.get("/metrics"))
            let answer = try response(client, pending: &pending)
            #expect(answer.status == 503)
            #expect(answer.body.text == "stopping\n")
            try await served.stop()
        }
    }
}

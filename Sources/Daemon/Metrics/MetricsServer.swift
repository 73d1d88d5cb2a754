import Core
import FoundationEssentials
import Glibc
import Intake
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Spool

/// The Prometheus endpoint's connections (`GET /metrics` on `[metrics] listen`, a loopback `host:port` or a
/// Unix socket path). Gauges derived from the spool (pending rows, oldest age, dead letters per table) are
/// refreshed at each scrape, so they cost nothing between scrapes.
///
/// A scrape reads the spool (SQLite, a file): that happens on the blocking thread pool, never on the event
/// loop, whose other connections (intake among them) keep being served meanwhile.
struct MetricsServer: ConnectionPipeline {
    let registry: PrometheusCollectorRegistry
    let spoolPath: String
    let capacity: SpoolCapacity
    let blocking: NIOThreadPool
    /// Answers `GET /readyz` (nil: always ready).
    var readiness: IntakeReadiness?
    /// Says when the endpoint holds its most connections.
    var logger: Logger?

    /// Bootstraps swift-metrics with Prometheus. Call once, before any instrument is used.
    static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(250), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5), .seconds(30),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// Test hook: `DEFINITE_AGENT_TEST_SCRAPE_DELAY_MS` makes every scrape's spool read that much slower, so
    /// that the integration tests can show a slow scrape holds up no event loop. Unset (always, outside
    /// the tests) it costs nothing.
    static let testScrapeDelay: Duration? = ProcessInfo.processInfo.environment["DEFINITE_AGENT_TEST_SCRAPE_DELAY_MS"]
        .flatMap(Int.init).map { .milliseconds($0) }

    var backlog: Int32 { 64 }

    /// Scrapers and probes keep few connections, each busy at its interval (see ``HTTPConnectionBounds``).
    static let maxConnections = 64
    static let idleTimeout = TimeAmount.seconds(60)

    func configure(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
        let render: @Sendable () -> [UInt8] = { [registry, spoolPath, capacity] in
            if let delay = Self.testScrapeDelay { NamedThread.sleep(for: delay) }
            Self.refreshGauges(spoolPath: spoolPath, capacity: capacity)
            return registry.emitToBuffer()
        }
        let (blocking, readiness) = (self.blocking, self.readiness)
        let bounds = HTTPConnectionBounds(maxConnections: Self.maxConnections, listener: "the metrics endpoint", logger: logger)
        return bootstrap.childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                guard try bounds.admit(channel) else { return }
                try channel.pipeline.syncOperations.configureLocalHTTPServer()
                try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(blocking: blocking, render: render, readiness: readiness))
                try bounds.bound(channel, idleTimeout: Self.idleTimeout)
            }
        }
    }

    static func refreshGauges(spoolPath: String, capacity: SpoolCapacity) {
        AgentMetrics.spoolBytes.record(capacity.usedBytes)
        guard let status = try? SpoolStatus.read(path: spoolPath) else { return }
        var pending: [String: Int] = [:]
        var oldest: [String: Double] = [:]
        var dead: [String: Int] = [:]
        for target in status.targets {
            pending[target.table, default: 0] += target.pending
            dead[target.table, default: 0] += target.deadLetters
            oldest[target.table] = max(oldest[target.table] ?? 0, target.oldestAgeSeconds ?? 0)
        }
        for (table, rows) in pending { AgentMetrics.pendingRows(table).record(rows) }
        for (table, age) in oldest { AgentMetrics.oldestPendingAge(table).record(age) }
        for (table, rows) in dead { AgentMetrics.deadLetters(table).record(rows) }
    }
}

/// Answers `GET /metrics` (rendered on the blocking pool, then written from the event loop), and
/// `GET /healthz` and `GET /readyz` (``HealthEndpoint``); anything else is 404. Requests on one connection
/// are answered in order (NIO's HTTP pipeline holds the next one until a response ends).
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let blocking: NIOThreadPool
    private let render: @Sendable () -> [UInt8]
    private let readiness: IntakeReadiness?
    private var head: HTTPRequestHead?

    init(blocking: NIOThreadPool, render: @escaping @Sendable () -> [UInt8], readiness: IntakeReadiness?) {
        self.blocking = blocking
        self.render = render
        self.readiness = readiness
    }

    /// A request the parser cannot read got its 400 (`Connection: close`): close, as the answer says (see
    /// `HTTPIntakeHandler.errorCaught`).
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError { context.close(promise: nil) }
        context.fireErrorCaught(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            if head.method == .GET, let health = HealthEndpoint.answer(path: path, readiness: readiness) {
                respond(
                    context: context, to: head, status: HTTPResponseStatus(statusCode: health.status), contentType: "application/json",
                    body: Array(health.body.utf8))
                return
            }
            guard head.method == .GET, path == "/metrics" else {
                respond(
                    context: context, to: head, status: .notFound, contentType: "text/plain",
                    body: Array("not found: try GET /metrics, /healthz or /readyz\n".utf8))
                return
            }
            blocking.runIfActive(eventLoop: context.eventLoop, render).assumeIsolated().whenComplete { result in
                switch result {
                case .success(let body):
                    self.respond(
                        context: context, to: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body)
                case .failure:  // the pool stopped: the daemon is stopping
                    self.respond(
                        context: context, to: head, status: .serviceUnavailable, contentType: "text/plain", body: Array("stopping\n".utf8))
                }
            }
        }
    }

    private func respond(
        context: ChannelHandlerContext, to head: HTTPRequestHead, status: HTTPResponseStatus, contentType: String, body: [UInt8]
    ) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let keepAlive = head.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}

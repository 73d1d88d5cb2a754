import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves the Prometheus text format at `GET /metrics` on `[metrics] listen`: a loopback `host:port`, or
/// a Unix socket path. Gauges derived from the spool (pending rows, oldest age, dead letters per table)
/// are refreshed at each scrape, so they cost nothing between scrapes.
final class MetricsServer: Service, Sendable {
    private let listen: String
    private let registry: PrometheusCollectorRegistry
    private let spoolPath: String
    private let capacity: SpoolCapacity
    private let readiness: IntakeReadiness?
    private let group: any EventLoopGroup
    private let logger: Logger

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

    init(listen: String, registry: PrometheusCollectorRegistry, spoolPath: String, capacity: SpoolCapacity,
         readiness: IntakeReadiness? = nil, group: any EventLoopGroup, logger: Logger) {
        self.listen = listen
        self.registry = registry
        self.spoolPath = spoolPath
        self.capacity = capacity
        self.readiness = readiness
        self.group = group
        self.logger = logger
    }

    func run() async throws {
        let render: @Sendable () -> [UInt8] = { [registry, spoolPath, capacity] in
            Self.refreshGauges(spoolPath: spoolPath, capacity: capacity)
            return registry.emitToBuffer()
        }
        let readiness = self.readiness
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render, readiness: readiness))
                }
            }
        let channel: any Channel
        if listen.hasPrefix("/") {
            try SocketPath.prepare(listen)
            channel = try await bootstrap.bind(unixDomainSocketPath: listen, cleanupExistingSocketFile: false).get()
        } else {
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
                throw ConfigurationError(.invalidValue, key: "metrics.listen", "\"\(listen)\" is not host:port or a socket path")
            }
            channel = try await bootstrap.bind(host: String(listen[..<colon]), port: port).get()
        }
        logger.info("metrics listening", metadata: ["address": "\(channel.localAddress?.plainDescription ?? listen)"])
        try await withGracefulShutdownHandler {
            try await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
        if listen.hasPrefix("/") { unlink(listen) }
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

/// Answers `GET /metrics`, and `GET /healthz` and `GET /readyz` (``HealthEndpoint``); anything else is 404.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private let readiness: IntakeReadiness?
    private var head: HTTPRequestHead?

    init(render: @escaping @Sendable () -> [UInt8], readiness: IntakeReadiness?) {
        self.render = render
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            let (status, contentType, body): (HTTPResponseStatus, String, [UInt8])
            if head.method == .GET, let health = HealthEndpoint.answer(path: path, readiness: readiness) {
                (status, contentType, body) = (HTTPResponseStatus(statusCode: health.status), "application/json", Array(health.body.utf8))
            } else if head.method == .GET, path == "/metrics" {
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", render())
            } else {
                (status, contentType, body) = (.notFound, "text/plain", Array("not found: try GET /metrics, /healthz or /readyz\n".utf8))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: "\(body.count)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            let keepAlive = head.isKeepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
            self.head = nil
        }
    }
}

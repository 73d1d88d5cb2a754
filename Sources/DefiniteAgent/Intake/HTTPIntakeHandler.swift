import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Serves one connection of the local Stream API: `POST /v2/stream` with the request format, limits and
/// status codes of the real API, answered once the rows are durable in the spool.
///
/// Bodies are refused with 413 as soon as they pass the 10 MB limit while streaming in (for gzip bodies,
/// once the inflated size would), never buffered whole. HTTP/1.1 keep-alive and pipelining are handled by
/// NIO's pipelining assistance: one request is processed at a time, answers go out in order.
final class HTTPIntakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let configuration: AgentConfiguration
    private let writer: SpoolWriter
    private let readiness: IntakeReadiness?
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    /// Set once this request was answered early (auth, route, size): the rest of it is ignored.
    private var answered = false

    init(configuration: AgentConfiguration, writer: SpoolWriter, readiness: IntakeReadiness? = nil, logger: Logger) {
        self.configuration = configuration
        self.writer = writer
        self.readiness = readiness
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
            answered = false
            if let early = check(head) { respond(context: context, head: head, early, close: false) }
        case .body(var part):
            guard !answered, let head else { return }
            body.writeBuffer(&part)
            if body.readableBytes > StreamAPILimits.maxBodyBytes {
                // Refused as it streams in: the rest is not read; the connection closes after the answer.
                respond(context: context, head: head, Self.failure(.tooLarge(.lineTooLong,
                    "the request body is over \(StreamAPILimits.maxBodyBytes) bytes (the Stream API's 10 MB limit)"), table: nil), close: true)
                body = ByteBuffer()
            }
        case .end:
            guard let head else { return }
            if !answered { process(context: context, head: head) }
            self.head = nil
        }
    }

    /// The answer to give before reading the body, if any.
    private func check(_ head: HTTPRequestHead) -> Answer? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        // Probes carry no token: the answers say nothing a local user could not learn otherwise.
        if head.method == .GET, let health = HealthEndpoint.answer(path: path, readiness: readiness) {
            return Answer(status: HTTPResponseStatus(statusCode: health.status), body: health.body, isProbe: true)
        }
        guard path == "/v2/stream" else {
            return Answer(status: .notFound, body: Self.errorBody("not found: the local Stream API serves POST /v2/stream, GET /healthz and GET /readyz", table: nil))
        }
        guard head.method == .POST else {
            return Answer(status: .methodNotAllowed, body: Self.errorBody("use POST", table: nil))
        }
        if let token = configuration.intake.httpToken {
            let given = head.headers["Authorization"].first ?? ""
            guard given == "Bearer \(token)" else {
                return Answer(status: .unauthorized, body: Self.errorBody("invalid or missing API key: send Authorization: Bearer <[intake] http_token>", table: nil))
            }
        }
        if let length = head.headers["Content-Length"].first.flatMap(Int.init), length > StreamAPILimits.maxBodyBytes {
            return Answer(status: .payloadTooLarge, body: Self.errorBody(
                "the request body is \(length) bytes; the Stream API's limit is \(StreamAPILimits.maxBodyBytes)", table: nil), close: true)
        }
        return nil
    }

    private func process(context: ChannelHandlerContext, head: HTTPRequestHead) {
        var bytes = Array(body.readableBytesView)
        body = ByteBuffer()
        let encoding = head.headers["Content-Encoding"].first?.lowercased()
        if encoding == "gzip" {
            do {
                bytes = try Gzip.decompress(bytes, limit: StreamAPILimits.maxBodyBytes)
            } catch {
                let tooLarge = (error as? Gzip.Error)?.code == -5  // Z_BUF_ERROR: the limit was passed
                respond(context: context, head: head, Self.failure(tooLarge
                    ? .tooLarge(.lineTooLong, "the inflated request body is over \(StreamAPILimits.maxBodyBytes) bytes (the Stream API's 10 MB limit)")
                    : .badRequest(.invalidJSON, "the body is not valid gzip (Content-Encoding: gzip)"), table: nil), close: false)
                return
            }
        } else if let encoding, encoding != "identity" {
            respond(context: context, head: head, Self.failure(.badRequest(.invalidJSON, "unsupported Content-Encoding \(encoding): use gzip"), table: nil), close: false)
            return
        }

        var parser = IntakeLineParser(configuration: configuration)
        var batch = IntakeBatch()
        let contentType = head.headers["Content-Type"].first?.lowercased() ?? "application/json"
        let query = Self.queryItems(head.uri)
        let result: Result<ParsedLine.Accepted, IntakeRejection>
        var wait = false
        if contentType.contains("ndjson") {
            wait = query["wait"] == "true"
            result = parser.target(query: query).flatMap { target in
                bytes.withUnsafeBytes { parser.parse(ndjson: $0, target: target, into: &batch) }
            }
        } else if bytes.first(where: { !Self.isWhitespace($0) }) == UInt8(ascii: "[") {
            // A bare array of rows, config in the query parameters (Fluent Bit's `format json`, Vector).
            wait = query["wait"] == "true"
            result = parser.target(query: query).flatMap { target in
                bytes.withUnsafeBytes { parser.parse(array: $0, target: target, into: &batch) }
            }
        } else {
            wait = bytes.withUnsafeBytes { raw in
                (try? JSONValue.parse(raw, maxDepth: 64))?["config"]?["wait"] == .bool(true)
            }
            result = bytes.withUnsafeBytes { parser.parse(body: $0, into: &batch) }.result
        }
        switch result {
        case .failure(let rejection):
            respond(context: context, head: head, Self.failure(rejection, table: batch.targets.first?.table), close: false)
        case .success(let accepted):
            let table = batch.targets[accepted.targetIndex].table
            guard writer.capacity.reserve(accepted.bytes) else {
                var answer = Self.failure(IntakeRejection(status: 507, code: .spoolFull,
                    message: "the agent's spool is full ([spool] max_bytes); nothing from this request was stored, retry later"), table: table)
                answer.headers.append(("Retry-After", "5"))
                respond(context: context, head: head, answer, close: false)
                return
            }
            let promise = context.eventLoop.makePromise(of: Void.self)
            writer.submit(batch, promise: promise)
            promise.futureResult.assumeIsolated().whenComplete { [self] outcome in
                switch outcome {
                case .success:
                    AgentMetrics.recordsSpooled.increment(by: Int64(accepted.records))
                    respond(context: context, head: head, Self.success(rows: accepted.records, table: table, wait: wait), close: false)
                case .failure(let error):
                    let rejection = error as? IntakeRejection ?? IntakeRejection(status: 500, code: .storageFailed, message: "\(error)")
                    respond(context: context, head: head, Self.failure(rejection, table: table), close: false)
                }
            }
        }
    }

    // MARK: Answers

    struct Answer {
        var status: HTTPResponseStatus
        var body: String
        var headers: [(String, String)] = []
        var close = false
        /// The answer to a health probe: not a refused request, whatever its status.
        var isProbe = false
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, _ answer: Answer, close: Bool) {
        answered = true
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(answer.body.utf8.count)")
        for (name, value) in answer.headers { headers.add(name: name, value: value) }
        let closing = close || answer.close || !head.isKeepAlive
        if closing { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: answer.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: answer.body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if closing { context.close(promise: nil) }
        }
        if !answer.isProbe, !answer.status.code.description.hasPrefix("2") {
            AgentMetrics.rejected(IntakeRejection.Code(rawValue: "http_\(answer.status.code)")).increment()
        }
    }

    static func success(rows: Int, table: String, wait: Bool) -> Answer {
        var warnings = ["spooled locally by definite-agent: the rows are durable on this host and will be delivered to the Stream API; snapshot_id is not known yet"]
        if wait { warnings.append("config.wait is not supported by the local agent: it cannot wait for the remote snapshot; the rows were spooled") }
        let body = "{\"success\":true,\"request_id\":\"\(requestID())\",\"stream_id\":null,\"table\":\(JSONCompactor.quote(table)),"
            + "\"accepted\":\(rows),\"successful_rows\":\(rows),\"rejected_rows\":0,\"partitions\":[],\"snapshot_id\":null,"
            + "\"warnings\":[\(warnings.map(JSONCompactor.quote).joined(separator: ","))],\"errors\":[]}"
        return Answer(status: .ok, body: body, headers: [("X-Agent-Spooled", "true")])
    }

    static func failure(_ rejection: IntakeRejection, table: String?) -> Answer {
        Answer(status: HTTPResponseStatus(statusCode: rejection.status), body: errorBody(rejection.message, table: table))
    }

    /// The documented response fields, for a request that wrote nothing.
    static func errorBody(_ message: String, table: String?) -> String {
        "{\"success\":false,\"request_id\":\"\(requestID())\",\"stream_id\":null,\"table\":\(table.map(JSONCompactor.quote) ?? "null"),"
            + "\"accepted\":0,\"successful_rows\":0,\"rejected_rows\":0,\"partitions\":[],\"snapshot_id\":null,\"warnings\":[],"
            + "\"errors\":[\(JSONCompactor.quote(message))]}"
    }

    static func requestID() -> String {
        "agent_" + String(UInt64.random(in: 0..<(1 << 48)), radix: 16)
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    static func queryItems(_ uri: String) -> [String: String] {
        guard let components = URLComponents(string: uri), let items = components.queryItems else { return [:] }
        var query: [String: String] = [:]
        for item in items { query[item.name] = item.value ?? "" }
        return query
    }
}

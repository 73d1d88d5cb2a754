import Core
import FoundationEssentials
import Glibc
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import Spool
import Synchronization

/// Serves one connection of the local Stream API: `POST /v2/stream` with the request format, limits and
/// status codes of the real API, answered once the rows are durable in the spool, or, with
/// `config.wait = true`, once the Stream API committed them (with their `snapshot_id`), at most
/// `[intake] wait_timeout` later: then 202 with `"committed":false` (durable here, not yet committed there).
///
/// Each request is served with the configuration in force when its head arrives (`settings`): a reload
/// that changes `http_token` or `allow_uids` / `allow_gids` applies to the next request of a connection
/// already open. On the Unix socket the peer (`SO_PEERCRED`, read once) must be one those lists allow,
/// when either is set; over TCP they do not apply.
///
/// Bodies are refused with 413 as soon as they pass the 10 MB limit while streaming in (for gzip bodies,
/// once the inflated size would), never buffered whole. HTTP/1.1 keep-alive and pipelining are handled by
/// NIO's pipelining assistance: one request is processed at a time, answers go out in order.
final class HTTPIntakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var configuration: AgentConfiguration
    /// Read again at each request head (`nil`: `configuration` stays as given).
    private let settings: LiveConfiguration?
    /// The peer of a Unix-socket connection, read when it became active; `nil` over TCP.
    private var peer: Result<PeerCredentials, any Error>?
    private let writer: SpoolWriter
    private let readiness: IntakeReadiness?
    private let confirmations: RemoteConfirmations?
    private let logger: Logger
    private var head: HTTPRequestHead?
    /// The request waiting for the API's commit, if any (the connection answers nothing else meanwhile).
    private var waiting: Waiting?

    /// A request with `config.wait = true` whose rows are durable and not yet committed upstream.
    private struct Waiting {
        let head: HTTPRequestHead
        let rows: Int
        let table: String
        let ticket: WaitTicket
        let timer: Scheduled<Void>
    }
    private var body = ByteBuffer()
    /// `body`, counted with every connection's unfinished input (``UnfinishedInputBudget``).
    private var unfinished: UnfinishedInputShare
    /// Set once this request was answered early (auth, route, size): the rest of it is ignored.
    private var answered = false
    /// A refused peer's answer, written: the connection closes once its request has been read.
    private var closeWhenTheRequestEnds: EventLoopFuture<Void>?
    /// Bytes of that request's body read and dropped.
    private var discarded = 0
    /// A whole request is being stored or waits for the API's commit: from its end to its answer.
    private var processing = false
    /// The daemon stops: a request that asks to wait for the API's commit is answered as soon as its
    /// rows are durable, without waiting.
    private var stopping = false

    init(
        configuration: AgentConfiguration, settings: LiveConfiguration? = nil, writer: SpoolWriter, readiness: IntakeReadiness? = nil,
        confirmations: RemoteConfirmations? = nil, unfinishedInput: UnfinishedInputBudget = UnfinishedInputBudget(), logger: Logger
    ) {
        self.unfinished = UnfinishedInputShare(of: unfinishedInput, maxLineBytes: configuration.intake.maxLineBytes.bytes)
        self.configuration = configuration
        self.settings = settings
        self.writer = writer
        self.readiness = readiness
        self.confirmations = confirmations
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Nothing read or written for a while (``HTTPConnectionBounds``): not idle while a whole request is
        // being stored or waits for the API's commit, up to `wait_timeout` (its answer would be lost, and the
        // client would send its rows again). A request whose body stops arriving is idle.
        if event is IdleStateHandler.IdleStateEvent, processing { return }
        // The daemon stops: a request still waiting for the API is answered now (its rows are durable).
        if event is DaemonStopping {
            stopping = true
            answerNotYetCommitted(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A request the HTTP parser cannot read was answered 400 with `Connection: close` by NIO's protocol
    /// error handler; nothing after it can be read, so the connection closes (a client that kept it open
    /// would otherwise hold it for ever). NIO's pipeline handler holds the parser's error back until the
    /// answers owed before it are written, so closing here loses none of them; other errors (bytes read
    /// after the parser failed) leave the closing to that one.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError { context.close(promise: nil) }
        context.fireErrorCaught(error)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        unfinished.release()
    }

    func channelInactive(context: ChannelHandlerContext) {
        body = ByteBuffer()
        unfinished.release()
        if let waiting {
            waiting.timer.cancel()
            waiting.ticket.cancel()
            self.waiting = nil
        }
        context.fireChannelInactive()
    }

    func channelActive(context: ChannelHandlerContext) {
        if context.channel.localAddress?.protocol == .unix, let provider = context.channel as? any SocketOptionProvider {
            let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(17))  // SO_PEERCRED on Linux
            // On the channel's own event loop this completes at once, before any read is processed.
            credentials.assumeIsolated().whenComplete { [self] in peer = $0 }
        }
        context.fireChannelActive()
    }

    /// The answer for a Unix-socket peer `[intake] allow_uids` / `allow_gids` do not allow; `nil` when it
    /// may write (or the connection is TCP, or neither list is set).
    private func peerRefusal() -> Answer? {
        guard let peer, let allowed = PeerAllowList(configuration.intake) else { return nil }
        let reason: String
        switch peer {
        case .success(let peer) where allowed.admits(uid: peer.uid, gid: peer.gid):
            return nil
        case .success(let peer):
            logger.warning(
                "refused a request of a writer that is not allowed by [intake] allow_uids/allow_gids",
                metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
            reason = PeerAllowList.refusal(uid: peer.uid, gid: peer.gid)
        case .failure(let error):
            reason = "the agent cannot read this connection's credentials (\(error))"
        }
        return Self.failure(IntakeRejection(.peerNotAllowed, reason), table: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
            unfinished.release()
            answered = false
            if let settings { configuration = settings.current }
            if let refusal = peerRefusal() {
                // Nothing of what it sends is kept, and the connection closes once the request has come
                // (its body, up to a bound, is read and dropped): closed at once, a client still writing
                // its body got a broken pipe instead of its 403.
                respond(context: context, head: head, refusal, close: false, closeWhenTheRequestEnds: true)
            } else if let early = check(head) {
                respond(context: context, head: head, early, close: false)
            } else if head.version != .http1_0,
                head.headers[canonicalForm: "Expect"].contains(where: { $0.lowercased() == "100-continue" })
            {
                // curl and libcurl ask before a body over 1 MB, and wait a second for the answer.
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
            }
        case .body(var part):
            guard !answered, let head else {
                if let written = closeWhenTheRequestEnds {
                    discarded += part.readableBytes
                    if discarded > Self.maxDiscardedBeforeClosing { closeOnce(after: written, context: context) }
                }
                return
            }
            body.writeBuffer(&part)
            guard unfinished.resize(to: body.readableBytes) else {
                // Refused as it streams in, as an oversized body is: the rest is not read.
                var answer = Self.failure(
                    IntakeRejection(
                        .busy,
                        "the agent already holds \(ByteSize(bytes: unfinished.limit)) of request bodies still arriving and unfinished lines from all connections, as much as it keeps; nothing of this request was stored; retry"
                    ), table: nil)
                answer.headers.append(("Retry-After", "1"))
                respond(context: context, head: head, answer, close: true)
                body = ByteBuffer()
                unfinished.release()
                return
            }
            if body.readableBytes > StreamAPILimits.maxBodyBytes {
                // Refused as it streams in: the rest is not read; the connection closes after the answer.
                respond(
                    context: context, head: head,
                    Self.failure(
                        IntakeRejection(
                            .bodyTooLarge,
                            "the request body is over \(StreamAPILimits.maxBodyBytes) bytes (the Stream API's 10 MB limit)"), table: nil),
                    close: true)
                body = ByteBuffer()
                unfinished.release()
            }
        case .end:
            if let written = closeWhenTheRequestEnds {
                closeOnce(after: written, context: context)
                return
            }
            guard let head else { return }
            if !answered {
                processing = true
                process(context: context, head: head)
            }
            self.head = nil
        }
    }

    /// The credentials of an `Authorization: Bearer …` header (the scheme in any case, blanks around ignored,
    /// as RFC 9110 has it); `nil` for none or another scheme.
    static func bearerToken(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = blanksTrimmed(header[...]).split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(blanksTrimmed(parts[1]))
    }

    /// `text` without the spaces and tabs around it.
    static func blanksTrimmed(_ text: Substring) -> Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        var trimmed = text.drop(while: isBlank)
        while let last = trimmed.last, isBlank(last) { trimmed = trimmed.dropLast() }
        return trimmed
    }

    /// Why a `Content-Encoding: gzip` body could not be inflated, as the answer.
    static func rejection(inflating error: any Error) -> IntakeRejection {
        let gzip = error as? Gzip.Error
        return switch gzip?.kind {
        case .overLimit:
            IntakeRejection(
                .bodyTooLarge, "the inflated request body is over \(StreamAPILimits.maxBodyBytes) bytes (the Stream API's 10 MB limit)")
        case .trailingData:
            IntakeRejection(
                .invalidEncoding,
                "the body has \(gzip?.code ?? 0) bytes after the end of its gzip data that do not start another gzip member; nothing was stored"
            )
        default:
            IntakeRejection(.invalidEncoding, "the body is not valid gzip (Content-Encoding: gzip)")
        }
    }

    /// The answer to give before reading the body, if any.
    private func check(_ head: HTTPRequestHead) -> Answer? {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        // Probes carry no token: the answers say nothing a local user could not learn otherwise.
        if head.method == .GET, let health = HealthEndpoint.answer(path: path, readiness: readiness) {
            return Answer(status: HTTPResponseStatus(statusCode: health.status), body: health.body)
        }
        guard path == "/v2/stream" else {
            return Self.failure(
                IntakeRejection(.notFound, "not found: the local Stream API serves POST /v2/stream, GET /healthz and GET /readyz"),
                table: nil)
        }
        guard head.method == .POST else {
            var answer = Self.failure(IntakeRejection(.methodNotAllowed, "use POST"), table: nil)
            answer.headers.append(("Allow", "POST"))
            return answer
        }
        if let token = configuration.intake.httpToken, Self.bearerToken(head.headers["Authorization"].first) != token {
            var answer = Self.failure(
                IntakeRejection(.unauthorized, "invalid or missing API key: send Authorization: Bearer <[intake] http_token>"), table: nil)
            answer.headers.append(("WWW-Authenticate", "Bearer"))
            return answer
        }
        if let length = head.headers["Content-Length"].first.flatMap(Int.init), length > StreamAPILimits.maxBodyBytes {
            var answer = Self.failure(
                IntakeRejection(
                    .bodyTooLarge, "the request body is \(length) bytes; the Stream API's limit is \(StreamAPILimits.maxBodyBytes)"),
                table: nil)
            answer.close = true
            return answer
        }
        return nil
    }

    private func process(context: ChannelHandlerContext, head: HTTPRequestHead) {
        var bytes = Array(body.readableBytesView)
        body = ByteBuffer()
        unfinished.release()  // handled within this tick
        var encoding = head.headers["Content-Encoding"].first.map { Self.blanksTrimmed($0[...]).lowercased() }
        if encoding == "x-gzip" { encoding = "gzip" }  // the older name, which RFC 9110 keeps as an alias
        if encoding == "gzip" {
            do {
                bytes = try Gzip.decompress(bytes, limit: StreamAPILimits.maxBodyBytes)
            } catch {
                respond(context: context, head: head, Self.failure(Self.rejection(inflating: error), table: nil), close: false)
                return
            }
        } else if let encoding, encoding != "identity" {
            respond(
                context: context, head: head,
                Self.failure(IntakeRejection(.invalidEncoding, "unsupported Content-Encoding \(encoding): use gzip"), table: nil),
                close: false)
            return
        }

        // A UTF-8 byte order mark (Windows tools write one) is not part of the JSON (RFC 8259 lets a parser
        // ignore it): it was refused as "unexpected byte 0xef".
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }

        var parser = IntakeLineParser(configuration: configuration)
        var batch = SpoolBatch()
        let contentType = head.headers["Content-Type"].first?.lowercased() ?? "application/json"
        let query = Self.queryItems(head.uri)
        let result: Result<ParsedLine.Accepted, IntakeRejection>
        let waits: Result<Bool, IntakeRejection>
        if contentType.contains("ndjson") {
            waits = Self.asksToWait(query: query)
            result = waits.flatMap { _ in parser.target(query: query) }.flatMap { target in
                bytes.withUnsafeBytes { parser.parse(ndjson: $0, target: target, into: &batch) }
            }
        } else if bytes.first(where: { !Self.isWhitespace($0) }) == UInt8(ascii: "[") {
            // A bare array of rows, config in the query parameters (Fluent Bit's `format json`, Vector).
            waits = Self.asksToWait(query: query)
            result = waits.flatMap { _ in parser.target(query: query) }.flatMap { target in
                bytes.withUnsafeBytes { parser.parse(array: $0, target: target, into: &batch) }
            }
        } else {
            waits = bytes.withUnsafeBytes(Self.asksToWait)
            result = waits.flatMap { _ in bytes.withUnsafeBytes { parser.parse(body: $0, into: &batch) }.result }
        }
        let wait = (try? waits.get()) ?? false
        switch result {
        case .failure(let rejection):
            respond(context: context, head: head, Self.failure(rejection, table: batch.targets.first?.table), close: false)
        case .success(let accepted):
            let table = batch.targets[accepted.targetIndex].table
            guard batch.admit(accepted, into: writer.capacity) else {
                var answer = Self.failure(
                    IntakeRejection(
                        .spoolFull, "the agent's spool is full ([spool] max_bytes); nothing from this request was stored, retry later"),
                    table: table)
                answer.headers.append(("Retry-After", "5"))
                respond(context: context, head: head, answer, close: false)
                return
            }
            let promise = context.eventLoop.makePromise(of: Void.self)
            let ticket = wait ? registerWait(context: context) : nil
            var appended: (@Sendable ([SpoolWriter.AppendedRange]) -> Void)?
            if let ticket { appended = { ranges in ticket.register(ranges) } }
            writer.submit(batch, promise: promise, appended: appended)
            promise.futureResult.assumeIsolated().whenComplete { [self] outcome in
                switch outcome {
                case .success:
                    AgentMetrics.recordsSpooled.increment(by: Int64(accepted.records))
                    if let ticket {
                        let timeout = TimeAmount.milliseconds(configuration.intake.waitTimeout.milliseconds)
                        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                            self.answerNotYetCommitted(context: context)
                        }
                        waiting = Waiting(head: head, rows: accepted.records, table: table, ticket: ticket, timer: timer)
                        // Committed after the stop began (its body was still arriving, or its commit in
                        // flight): the stop's answer to the waiting requests has gone by.
                        if stopping { answerNotYetCommitted(context: context) }
                    } else {
                        respond(context: context, head: head, Self.success(rows: accepted.records, table: table), close: false)
                    }
                case .failure(let error):
                    ticket?.cancel()
                    let rejection = IntakeRejection(submissionFailure: error)
                    respond(context: context, head: head, Self.failure(rejection, table: table), close: false)
                }
            }
        }
    }

    /// Whether a JSON request body's `config` says `"wait": true`. Only the `config` object is decoded: a
    /// body of 10 MB of rows decoded whole would take several times that in memory.
    static func asksToWait(_ body: UnsafeRawBufferPointer) -> Result<Bool, IntakeRejection> {
        // Not JSON: the parser refuses the body and says why.
        guard let config = JSONScanner.valueOfMember("config", in: body),
            let value = try? JSONValue.parse(UnsafeRawBufferPointer(rebasing: body[config]))
        else { return .success(false) }
        switch value["wait"] {
        case nil, .null?, .bool(false)?: return .success(false)
        case .bool(true)?: return .success(true)
        case let other?:
            // A "true" in quotes once meant no wait at all, without a word.
            return .failure(IntakeRejection(.invalidConfig, "config.wait must be true or false, not \(JSONCompactor.render(other))"))
        }
    }

    /// `wait` of an NDJSON body's or a bare array's query: `true` or `1`, `false` or `0`.
    static func asksToWait(query: [String: String]) -> Result<Bool, IntakeRejection> {
        switch query["wait"] {
        case nil, "", "false", "0": .success(false)
        case "true", "1": .success(true)
        case let other?: .failure(IntakeRejection(.invalidConfig, "the wait query parameter must be true or false, not \"\(other)\""))
        }
    }

    // MARK: Waiting for the API

    /// A ticket for a request that waits for the API's commit; it registers once the rows have seqs.
    private func registerWait(context: ChannelHandlerContext) -> WaitTicket? {
        guard let confirmations else { return nil }
        let handler = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        return WaitTicket(confirmations: confirmations) { [eventLoop = context.eventLoop] outcome in
            eventLoop.execute {
                let (handler, context) = handler.value
                handler.answerCommitted(outcome, context: context)
            }
        }
    }

    private func answerCommitted(_ outcome: RemoteConfirmations.Outcome, context: ChannelHandlerContext) {
        guard let waiting else { return }
        self.waiting = nil
        waiting.timer.cancel()
        respond(
            context: context, head: waiting.head, Self.committed(rows: waiting.rows, table: waiting.table, outcome: outcome), close: false)
    }

    /// The wait is over (`wait_timeout`, or the daemon stops) before the API committed the rows.
    private func answerNotYetCommitted(context: ChannelHandlerContext) {
        guard let waiting else { return }
        self.waiting = nil
        waiting.timer.cancel()
        waiting.ticket.cancel()
        respond(
            context: context, head: waiting.head,
            Self.notYetCommitted(
                rows: waiting.rows, table: waiting.table, timeout: configuration.intake.waitTimeout), close: false)
    }

    // MARK: Answers

    struct Answer {
        var status: HTTPResponseStatus
        /// Why the request was refused (counted in `definite_agent_intake_rejected_total`); `nil` when it
        /// was not.
        var refusal: IntakeRejection.Code?
        var body: String
        var headers: [(String, String)] = []
        var close = false
    }

    /// Closes the connection of a refused request once its answer is written (only the first call).
    private func closeOnce(after written: EventLoopFuture<Void>, context: ChannelHandlerContext) {
        closeWhenTheRequestEnds = nil
        written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// Bytes of a refused request's body read and dropped before its connection closes anyway: as much as
    /// a request may carry, so that any client sending a body it may send reads its answer (at 1 MiB, a
    /// 3 MB body got a broken pipe instead of its 403).
    static let maxDiscardedBeforeClosing = StreamAPILimits.maxBodyBytes

    /// `closeWhenTheRequestEnds`: the answer says `Connection: close`, and the connection closes once the
    /// request's end has been read (``maxDiscardedBeforeClosing`` at most), not at once.
    private func respond(
        context: ChannelHandlerContext, head: HTTPRequestHead, _ answer: Answer, close: Bool, closeWhenTheRequestEnds: Bool = false
    ) {
        answered = true
        processing = false
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(answer.body.utf8.count)")
        for (name, value) in answer.headers { headers.add(name: name, value: value) }
        let closing = close || answer.close || !head.isKeepAlive
        if closing || closeWhenTheRequestEnds { headers.add(name: "Connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: answer.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: answer.body)))), promise: nil)
        if let refusal = answer.refusal { AgentMetrics.rejected(refusal).increment() }
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        // Also when the request said `Connection: close` (urllib sends it) or is HTTP/1.0: the client may
        // still be writing its body.
        if closeWhenTheRequestEnds {
            self.closeWhenTheRequestEnds = written
            return
        }
        written.assumeIsolated().whenComplete { _ in
            if closing { context.close(promise: nil) }
        }
    }

    static func success(rows: Int, table: String) -> Answer {
        let warning =
            "spooled locally by definite-agent: the rows are durable on this host and will be delivered to the Stream API; snapshot_id is not known yet (send config.wait = true to wait for it)"
        let body =
            "{\"success\":true,\"request_id\":\"\(requestID())\",\"stream_id\":null,\"table\":\(JSONCompactor.quote(table)),"
            + "\"accepted\":\(rows),\"successful_rows\":\(rows),\"rejected_rows\":0,\"partitions\":[],\"snapshot_id\":null,"
            + "\"warnings\":[\(JSONCompactor.quote(warning))],\"errors\":[]}"
        return Answer(status: .ok, body: body, headers: [("X-Agent-Spooled", "true")])
    }

    /// `config.wait = true`, and the API committed (or dead-lettered) every row: its answer, as the API
    /// would give it, with `"committed":true`.
    static func committed(rows: Int, table: String, outcome: RemoteConfirmations.Outcome) -> Answer {
        let unknownWarning =
            outcome.unknown == 0
            ? nil
            : "\(outcome.unknown) rows went in a request with other rows that the API partly rejected without saying which; whether these were written is not known (their dead letter is marked partial: see `definite-agent dlq list`)"
        let body =
            "{\"success\":\(outcome.committed > 0 || rows == 0),\"request_id\":\"\(requestID())\",\"stream_id\":null,"
            + "\"table\":\(JSONCompactor.quote(table)),\"accepted\":\(rows),\"successful_rows\":\(outcome.committed),"
            + "\"rejected_rows\":\(outcome.rejected),\"partitions\":[],\"snapshot_id\":\(outcome.snapshotID.map(JSONCompactor.quote) ?? "null"),"
            + "\"committed\":true,\"warnings\":[\(unknownWarning.map(JSONCompactor.quote) ?? "")],"
            + "\"errors\":[\(outcome.errors.map(JSONCompactor.quote).joined(separator: ","))]}"
        return Answer(status: .ok, body: body)
    }

    /// `config.wait = true`, and `wait_timeout` passed first (or the daemon stops): 202, `"committed":false`.
    static func notYetCommitted(rows: Int, table: String, timeout: HumanDuration) -> Answer {
        let warning =
            "durable in definite-agent's spool on this host, but not yet committed by the Stream API within [intake] wait_timeout (\(timeout)); it will be delivered, and its snapshot_id is not known"
        let body =
            "{\"success\":true,\"request_id\":\"\(requestID())\",\"stream_id\":null,\"table\":\(JSONCompactor.quote(table)),"
            + "\"accepted\":\(rows),\"successful_rows\":0,\"rejected_rows\":0,\"partitions\":[],\"snapshot_id\":null,"
            + "\"committed\":false,\"warnings\":[\(JSONCompactor.quote(warning))],\"errors\":[]}"
        return Answer(status: .accepted, body: body, headers: [("X-Agent-Spooled", "true")])
    }

    static func failure(_ rejection: IntakeRejection, table: String?) -> Answer {
        Answer(
            status: HTTPResponseStatus(statusCode: rejection.status), refusal: rejection.code,
            body: errorBody(rejection.message, table: table))
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
        guard let start = uri.firstIndex(of: "?") else { return [:] }
        let text = uri[uri.index(after: start)...].prefix { $0 != "#" }
        var query: [String: String] = [:]
        for item in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            query[formDecoded(parts[0])] = parts.count > 1 ? formDecoded(parts[1]) : ""
        }
        return query
    }

    /// A query name or value as HTML forms (Python's `urlencode`, `requests`' `params=`) encode it: `+` is a
    /// space, `%XX` a byte. Each item on its own: one stray character does not change how the others read
    /// (Foundation's parser gave up decoding the whole query for one `|`). A `%` not followed by two hex
    /// digits stays as it is.
    static func formDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var input = text.utf8[...]
        while let byte = input.popFirst() {
            switch byte {
            case UInt8(ascii: "+"):
                bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                if input.count >= 2, let high = hexValue(input[input.startIndex]),
                    let low = hexValue(input[input.index(after: input.startIndex)])
                {
                    bytes.append(high << 4 | low)
                    input = input.dropFirst(2)
                } else {
                    bytes.append(byte)
                }
            default:
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A request's wait for the API's commit: registered with ``RemoteConfirmations`` from the writer's thread
/// once its rows have seqs, cancelled from the event loop when the request is answered otherwise.
final class WaitTicket: Sendable {
    private let confirmations: RemoteConfirmations
    private let settled: @Sendable (RemoteConfirmations.Outcome) -> Void
    private let state = Mutex<(ticket: RemoteConfirmations.Ticket?, cancelled: Bool)>((nil, false))

    init(confirmations: RemoteConfirmations, settled: @escaping @Sendable (RemoteConfirmations.Outcome) -> Void) {
        self.confirmations = confirmations
        self.settled = settled
    }

    /// The request's rows got these seqs (one range: a request names one table).
    func register(_ ranges: [SpoolWriter.AppendedRange]) {
        guard let range = ranges.first else { return }
        let ticket = confirmations.register(targetID: range.targetID, seqs: range.range, settled: settled)
        let cancelled = state.withLock { state in
            state.ticket = ticket
            return state.cancelled
        }
        if cancelled { confirmations.cancel(ticket) }
    }

    func cancel() {
        let ticket = state.withLock { state in
            state.cancelled = true
            return state.ticket
        }
        if let ticket { confirmations.cancel(ticket) }
    }
}

import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The local Stream API in-process: raw HTTP/1.1 bytes into the pipeline ``HTTPIntakeServer`` installs
/// (NIO's HTTP server pipeline with error handling, ``StopNotice``, ``HTTPIntakeHandler``) on an in-memory
/// channel, in front of a real spool writer; the responses are read back as bytes.
@Suite("HTTP intake handler")
struct HTTPIntakeHandlerTests {
    static func configuration() -> AgentConfiguration {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        return config
    }

    /// A connection of the local Stream API writing to `spool`.
    func connection(
        _ spool: TestSpool, configuration: AgentConfiguration = configuration(),
        readiness: IntakeReadiness? = nil
    ) async throws -> OutboundCollector<IOData> {
        let writer = spool.writer
        let channel = try await NIOAsyncTestingChannel.connected { pipeline in
            try pipeline.configureLocalHTTPServer()
            try pipeline.addHandler(StopNotice(), position: .first)
            try pipeline.addHandler(
                HTTPIntakeHandler(
                    configuration: configuration, writer: writer, readiness: readiness, confirmations: nil, logger: quietLogger))
        }
        return OutboundCollector(channel, as: IOData.self) { data in
            if case .byteBuffer(let buffer) = data { return Array(buffer.readableBytesView) }
            return []
        }
    }

    static func request(
        _ method: String = "POST", _ uri: String = "/v2/stream", version: String = "HTTP/1.1",
        headers: [(String, String)] = [], body: [UInt8] = []
    ) -> [UInt8] {
        var head = "\(method) \(uri) \(version)\r\nHost: localhost\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if method == "POST", !headers.contains(where: { $0.0 == "Transfer-Encoding" || $0.0 == "Content-Length" }) {
            head += "Content-Length: \(body.count)\r\n"
        }
        return Array((head + "\r\n").utf8) + body
    }

    static func post(_ body: String, _ uri: String = "/v2/stream", headers: [(String, String)] = [("Content-Type", "application/json")])
        -> [UInt8]
    {
        request("POST", uri, headers: headers, body: Array(body.utf8))
    }

    func send(_ bytes: [UInt8], to connection: OutboundCollector<IOData>) async throws {
        try await connection.channel.writeInbound(ByteBuffer(bytes: bytes))
    }

    /// Waits for the next response on the connection and takes it.
    func response(_ connection: inout OutboundCollector<IOData>) async throws -> HTTPTestResponse {
        let complete = try await connection.collect { HTTPTestResponse.parse($0) != nil }
        try #require(complete, "no complete response; got: \(connection.bytes.text)")
        let (response, length) = try #require(HTTPTestResponse.parse(connection.bytes))
        connection.bytes.removeFirst(length)
        return response
    }

    func finish(_ connection: OutboundCollector<IOData>) async throws {
        _ = try await connection.channel.finish(acceptAlreadyClosed: true)
    }

    static let documentedFields: Set<String> = [
        "success", "request_id", "stream_id", "table", "accepted", "successful_rows", "rejected_rows", "partitions",
        "snapshot_id", "warnings", "errors",
    ]

    // MARK: Accepted

    @Test func aValidPostIsAnswered200OnceItsRowsAreDurable() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.post(#"{"config":{"table":"bronze.h"},"data":[{"a":1},{"a":2}]}"#), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 200)
        #expect(answer.header("Content-Type") == "application/json")
        #expect(answer.header("X-Agent-Spooled") == "true")
        #expect(answer.header("Connection") == nil)
        let body = try answer.json
        #expect(Set(body.keys) == Self.documentedFields)
        #expect(body["success"] as? Bool == true)
        #expect(body["table"] as? String == "bronze.h")
        #expect(body["accepted"] as? Int == 2)
        #expect(body["successful_rows"] as? Int == 2)
        #expect(body["rejected_rows"] as? Int == 0)
        #expect(body["snapshot_id"] is NSNull)
        #expect((body["request_id"] as? String)?.hasPrefix("agent_") == true)
        #expect((body["warnings"] as? [String])?.first?.hasPrefix("spooled locally by definite-agent") == true)
        #expect(try spool.records(of: "bronze.h") == [#"{"a":1}"#, #"{"a":2}"#])
        #expect(try await !http.isClosed())
        try await finish(http)
    }

    @Test func anNDJSONBodyAndABareArrayTakeTheirTableFromTheQuery() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(
            Self.post(
                "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n", "/v2/stream?table=bronze.nd",
                headers: [("Content-Type", "application/x-ndjson")]), to: http)
        let ndjson = try await response(&http)
        #expect(ndjson.status == 200)
        #expect(try ndjson.json["accepted"] as? Int == 3)
        #expect(try ndjson.json["table"] as? String == "bronze.nd")

        try await send(Self.post(#"  [{"b":1},{"b":2}]"#, "/v2/stream?table=bronze.arr"), to: http)
        let array = try await response(&http)
        #expect(array.status == 200)
        #expect(try array.json["accepted"] as? Int == 2)
        #expect(try spool.pending() == ["bronze.nd": 3, "bronze.arr": 2])

        // Without ?table= neither form says where its rows go.
        try await send(Self.post("{\"a\":1}\n", headers: [("Content-Type", "application/x-ndjson")]), to: http)
        let untargeted = try await response(&http)
        #expect(untargeted.status == 422)
        #expect(try untargeted.error == "the table query parameter is required for an NDJSON body or a JSON array (?table=ns.table)")
        try await finish(http)
    }

    /// An NDJSON error named the row by its place among the rows only (`data[1]`), which is not the line
    /// an editor shows when blank lines come before it; and a body starting with a UTF-8 byte order mark
    /// (Windows tools write one) was refused as "unexpected byte 0xef".
    @Test func anNDJSONErrorNamesItsLineAndAByteOrderMarkIsSkipped() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)
        let ndjson = [("Content-Type", "application/x-ndjson")]

        try await send(Self.post("{\"a\":1}\n\n\n{\"a\":tru}\n", "/v2/stream?table=bronze.nd", headers: ndjson), to: http)
        let refused = try await response(&http)
        #expect(refused.status == 400)
        let error = try refused.error ?? ""
        #expect(error.hasPrefix("line 4 of the body, data[1]: invalid JSON at byte 5"), "\(error)")

        let bom = "\u{FEFF}"
        try await send(Self.post(bom + "{\"a\":1}\n", "/v2/stream?table=bronze.nd", headers: ndjson), to: http)
        #expect(try await response(&http).status == 200)
        try await send(Self.post(bom + #"{"config":{"table":"bronze.j"},"data":{"b":1}}"#), to: http)
        #expect(try await response(&http).status == 200)
        #expect(try spool.pending() == ["bronze.nd": 1, "bronze.j": 1])
        try await finish(http)
    }

    /// Query parameters as forms encode them: Python's `urlencode` writes a space as `+` (and `json.dumps`
    /// puts one after every `:`), which was read as a `+`; and one character Foundation's parser did not
    /// like (`|`) turned off decoding for every parameter.
    @Test func queryParametersAreDecodedAsFormsEncodeThem() {
        let query = HTTPIntakeHandler.queryItems(
            "/v2/stream?table=bronze.q&tags=%7B%22a%22%3A+1%2C+%22b%22%3A%22x+y%22%7D&x=a|b&odd=100%&k#frag")
        #expect(query["tags"] == #"{"a": 1, "b":"x y"}"#)
        #expect(query["table"] == "bronze.q" && query["x"] == "a|b" && query["odd"] == "100%" && query["k"] == "")
        #expect(HTTPIntakeHandler.queryItems("/v2/stream") == [:])
        #expect(HTTPIntakeHandler.formDecoded("caf%C3%A9%2b") == "café+")
    }

    /// RFC 9110: the auth scheme is case-insensitive and blanks around a header's value are not part of it.
    @Test func theBearerTokenIsReadAsRFC9110WritesIt() {
        #expect(HTTPIntakeHandler.bearerToken("Bearer s3cret") == "s3cret")
        #expect(HTTPIntakeHandler.bearerToken("  bearer   s3cret  ") == "s3cret")
        #expect(HTTPIntakeHandler.bearerToken("Basic s3cret") == nil && HTTPIntakeHandler.bearerToken(nil) == nil)
        #expect(HTTPIntakeHandler.bearerToken("Bearer") == nil)
        #expect(HTTPIntakeHandler.blanksTrimmed(" \tgzip ") == "gzip")
    }

    @Test func aGzipBodyIsInflatedBeforeItIsParsed() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        let body = try Gzip.compress(Array(#"{"config":{"table":"bronze.gz"},"data":[{"z":"zipped"},{"z":2}]}"#.utf8), level: 6)
        try await send(Self.request(headers: [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], body: body), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 200)
        #expect(try answer.json["accepted"] as? Int == 2)
        #expect(try spool.records(of: "bronze.gz") == [#"{"z":"zipped"}"#, #"{"z":2}"#])
        try await finish(http)
    }

    @Test func pipelinedRequestsAreAnsweredInOrderOnOneConnection() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(
            Self.post(#"{"config":{"table":"bronze.one"},"data":{"a":1}}"#)
                + Self.request("GET", "/nowhere")
                + Self.post(#"{"config":{"table":"bronze.two"},"data":[{"a":1},{"a":2}]}"#), to: http)
        let first = try await response(&http)
        let second = try await response(&http)
        let third = try await response(&http)
        #expect(first.status == 200)
        #expect(try first.json["table"] as? String == "bronze.one")
        #expect(second.status == 404)
        #expect(third.status == 200)
        #expect(try third.json["table"] as? String == "bronze.two")
        #expect(try third.json["accepted"] as? Int == 2)
        try await finish(http)
    }

    // MARK: Refused

    @Test func anUnknownPathIs404AndTheConnectionStaysUsable() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.post(#"{"config":{"table":"bronze.h"},"data":{"a":1}}"#, "/v1/stream"), to: http)
        let notFound = try await response(&http)
        #expect(notFound.status == 404)
        #expect(try notFound.json["success"] as? Bool == false)
        #expect(try Set(notFound.json.keys) == Self.documentedFields)
        #expect(try notFound.error == "not found: the local Stream API serves POST /v2/stream, GET /healthz and GET /readyz")
        #expect(try spool.pending().isEmpty)

        try await send(Self.request("GET", "/v2/stream"), to: http)
        let wrongMethod = try await response(&http)
        #expect(wrongMethod.status == 405 && wrongMethod.header("Allow") == "POST")
        #expect(try wrongMethod.error == "use POST")

        try await send(Self.post(#"{"config":{"table":"bronze.h"},"data":{"a":1}}"#), to: http)
        #expect(try await response(&http).status == 200)
        try await finish(http)
    }

    @Test func aContentLengthOverTheLimitIs413BeforeTheBodyAndClosesTheConnection() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        // Answered and closed before the body: the body NIO's HTTP decoder will never see the end of is not
        // an error to answer (``ParserErrorsOfClosedConnections``).
        try await send(Self.request(headers: [("Content-Type", "application/json"), ("Content-Length", "10000001")]), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 413)
        #expect(answer.header("Connection") == "close")
        #expect(try answer.error == "the request body is 10000001 bytes; the Stream API's limit is 10000000")
        #expect(try await http.waitUntilClosed())
        try await finish(http)
    }

    @Test func aContentLengthOfExactlyTheLimitIsNotRefusedEarly() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        // Nothing is answered from the head alone: the body is awaited.
        try await send(Self.request(headers: [("Content-Type", "application/json"), ("Content-Length", "10000000")]), to: http)
        try await http.drain()
        #expect(http.bytes.isEmpty, "answered early: \(http.bytes.text)")
        #expect(try await !http.isClosed())
        // Closing it now cuts the body short: nobody is left to answer.
        try await finish(http)
    }

    @Test func aStreamedBodyIsRefused413AsSoonAsItPassesTheLimit() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.request(headers: [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]), to: http)
        let chunk = Array("100000\r\n".utf8) + [UInt8](repeating: UInt8(ascii: " "), count: 0x100000) + Array("\r\n".utf8)
        var sent = 0
        var cut = false
        while !cut, sent <= 2 * StreamAPILimits.maxBodyBytes {
            do {
                try await send(chunk, to: http)
            } catch {
                cut = true  // closed in the middle of the body: the decoder takes nothing more
            }
            sent += 0x100000
        }
        #expect(cut)
        // The chunk that passed the limit closed the connection; the one after it found it closed.
        #expect(sent > StreamAPILimits.maxBodyBytes && sent <= StreamAPILimits.maxBodyBytes + 2 * 0x100000, "refused after \(sent) bytes")
        let answer = try await response(&http)
        #expect(answer.status == 413)
        #expect(answer.header("Connection") == "close")
        #expect(try answer.error == "the request body is over 10000000 bytes (the Stream API's 10 MB limit)")
        #expect(try await http.waitUntilClosed())
        #expect(try spool.pending().isEmpty)
        try await finish(http)
    }

    @Test func aGzipBodyThatInflatesPastTheLimitIs413() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        let inflated = Array("[".utf8) + [UInt8](repeating: UInt8(ascii: " "), count: StreamAPILimits.maxBodyBytes) + Array("]".utf8)
        let body = try Gzip.compress(inflated, level: 1)
        #expect(body.count < 100_000)
        try await send(
            Self.request(
                "POST", "/v2/stream?table=bronze.bomb",
                headers: [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], body: body), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 413)
        #expect(try answer.error == "the inflated request body is over 10000000 bytes (the Stream API's 10 MB limit)")
        try await finish(http)
    }

    @Test func aBodyThatIsNotGzipOrInAnotherEncodingIs400() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.request(headers: [("Content-Encoding", "gzip")], body: Array(#"{"data":{"a":1}}"#.utf8)), to: http)
        let notGzip = try await response(&http)
        #expect(notGzip.status == 400)
        #expect(try notGzip.error == "the body is not valid gzip (Content-Encoding: gzip)")

        try await send(Self.request(headers: [("Content-Encoding", "br")], body: Array(#"{"data":{"a":1}}"#.utf8)), to: http)
        let brotli = try await response(&http)
        #expect(brotli.status == 400)
        #expect(try brotli.error == "unsupported Content-Encoding br: use gzip")
        #expect(try spool.pending().isEmpty)
        try await finish(http)
    }

    @Test func invalidBodiesGetTheAPIsStatusesAndTheTableWhenKnown() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.post(#"{"config":{"table":"bronze.h"},"data":[{"a":1},{"a":}]}"#), to: http)
        let syntax = try await response(&http)
        #expect(syntax.status == 400)
        #expect(try syntax.json["success"] as? Bool == false)
        #expect(try syntax.error?.contains("invalid JSON at byte") == true)

        try await send(Self.post(#"{"data":[{"a":1}]}"#), to: http)
        let noTable = try await response(&http)
        #expect(noTable.status == 422)
        #expect(try noTable.json["table"] is NSNull)
        #expect(try noTable.error == "config.table is required: the body must be {\"data\":…,\"config\":{\"table\":\"ns.table\"}}")

        try await send(
            Self.post(#"{"config":{"table":"bronze.m","mode":"merge","primary_key":["id"]},"data":[{"id":1},{"x":2}]}"#), to: http)
        let missingKey = try await response(&http)
        #expect(missingKey.status == 400)
        #expect(try missingKey.json["table"] as? String == "bronze.m")
        #expect(try missingKey.json["accepted"] as? Int == 0)
        #expect(try spool.pending().isEmpty)
        try await finish(http)
    }

    @Test func withATokenOnlyRequestsBearingItAreTaken() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var config = Self.configuration()
        config.intake.httpToken = "s3cret"
        var http = try await connection(spool, configuration: config)
        let body = #"{"config":{"table":"bronze.t"},"data":{"a":1}}"#

        for authorization in [nil, "Bearer wrong", "s3cret", "Basic s3cret"] {
            var headers = [("Content-Type", "application/json")]
            if let authorization { headers.append(("Authorization", authorization)) }
            try await send(Self.post(body, headers: headers), to: http)
            let refused = try await response(&http)
            #expect(refused.status == 401, "Authorization: \(authorization ?? "none")")
            #expect(refused.header("WWW-Authenticate") == "Bearer")
            #expect(try refused.error == "invalid or missing API key: send Authorization: Bearer <[intake] http_token>")
        }
        // Health probes carry no token.
        try await send(Self.request("GET", "/healthz"), to: http)
        #expect(try await response(&http).status == 200)

        try await send(Self.post(body, headers: [("Content-Type", "application/json"), ("Authorization", "Bearer s3cret")]), to: http)
        #expect(try await response(&http).status == 200)
        // The scheme in any case (RFC 9110).
        try await send(Self.post(body, headers: [("Content-Type", "application/json"), ("Authorization", "bearer s3cret")]), to: http)
        #expect(try await response(&http).status == 200)
        #expect(try spool.pending() == ["bronze.t": 2])
        try await finish(http)
    }

    @Test func aFullSpoolIs507WithRetryAfter() async throws {
        let spool = try TestSpool("http-handler", maxBytes: 8)
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(Self.post(#"{"config":{"table":"bronze.f"},"data":[{"a":1},{"a":2}]}"#), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 507)
        #expect(answer.header("Retry-After") == "5")
        #expect(try answer.json["table"] as? String == "bronze.f")
        #expect(try answer.error == "the agent's spool is full ([spool] max_bytes); nothing from this request was stored, retry later")
        #expect(try spool.pending().isEmpty)
        try await finish(http)
    }

    @Test func aStoppedWriterIs503() async throws {
        let spool = try TestSpool("http-handler")
        spool.shutDown()
        var http = try await connection(spool)

        try await send(Self.post(#"{"config":{"table":"bronze.s"},"data":{"a":1}}"#), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 503)
        #expect(try answer.error == "the agent is shutting down; retry shortly")
        try await finish(http)
    }

    // MARK: Connections and probes

    @Test func anHTTP10RequestWithoutKeepAliveIsAnsweredThenClosed() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        try await send(
            Self.request(
                "POST", "/v2/stream", version: "HTTP/1.0", headers: [("Content-Type", "application/json")],
                body: Array(#"{"config":{"table":"bronze.old"},"data":{"a":1}}"#.utf8)), to: http)
        let answer = try await response(&http)
        #expect(answer.status == 200)
        #expect(answer.header("Connection") == "close")
        #expect(try await http.waitUntilClosed())
        #expect(try spool.pending() == ["bronze.old": 1])
        try await finish(http)
    }

    @Test func probesAnswerHealthAndReadiness() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        let readiness = IntakeReadiness(capacity: spool.writer.capacity)
        var http = try await connection(spool, readiness: readiness)

        try await send(Self.request("GET", "/healthz"), to: http)
        let alive = try await response(&http)
        #expect(alive.status == 200 && alive.body.text == "{\"status\":\"alive\"}\n")

        try await send(Self.request("GET", "/readyz?verbose=1"), to: http)
        let starting = try await response(&http)
        #expect(starting.status == 503)
        #expect(starting.body.text == "{\"status\":\"not ready\",\"reason\":\"starting: the intake listeners are not up yet\"}\n")

        readiness.markListening()
        try await send(Self.request("GET", "/readyz"), to: http)
        let ready = try await response(&http)
        #expect(ready.status == 200 && ready.body.text == "{\"status\":\"ready\"}\n")
        try await finish(http)
    }

    @Test func bytesThatAreNotHTTPAre400WithConnectionClose() async throws {
        let spool = try TestSpool("http-handler")
        defer { spool.shutDown() }
        var http = try await connection(spool)

        // NIO's error handler answers; the parser's error still travels to the end of the pipeline.
        await #expect(throws: HTTPParserError.invalidMethod) {
            try await send(Array("{\"data\":{\"a\":1}}\r\n\r\n".utf8), to: http)
        }
        let answer = try await response(&http)
        #expect(answer.status == 400)
        #expect(answer.header("Connection") == "close")
        // And the server closes it, as the answer says (a client that kept it open held it for ever).
        #expect(try await http.waitUntilClosed())
        #expect(try spool.pending().isEmpty)
        try await finish(http)
    }
}

@Suite("HTTP intake: config.wait")
struct HTTPIntakeWaitTests {
    @Test func onlyTheConfigObjectSaysWhetherARequestWaits() {
        let cases: [(String, Bool?)] = [
            (#"{"data":[{"wait":true}],"config":{"table":"bronze.t","wait":true}}"#, true),
            (#"{"config":{"table":"bronze.t","wait":true},"data":{"a":1}}"#, true),
            (#"{"data":[{"wait":true}],"config":{"table":"bronze.t"}}"#, false),
            (#"{"data":{"config":{"wait":true}},"config":{"table":"bronze.t","wait":false}}"#, false),
            (#"{"data":[],"config":{"table":"bronze.t","wait":null}}"#, false),
            (#"{"data":[1,"#, false),
            ("[]", false),
            // Not a boolean: once no wait, without a word; now refused.
            (#"{"data":[],"config":{"table":"bronze.t","wait":"true"}}"#, nil),
            (#"{"data":[],"config":{"table":"bronze.t","wait":1}}"#, nil),
        ]
        for (body, waits) in cases {
            let answer = Array(body.utf8).withUnsafeBytes(HTTPIntakeHandler.asksToWait)
            #expect((try? answer.get()) == waits, "\(body)")
        }
        #expect(
            (try? HTTPIntakeHandler.asksToWait(query: ["wait": "yes"]).get()) == nil
                && (try? HTTPIntakeHandler.asksToWait(query: ["wait": "1"]).get()) == true
                && (try? HTTPIntakeHandler.asksToWait(query: [:]).get()) == false)
    }
}

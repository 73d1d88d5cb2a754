import CCurl
import Core
import FoundationEssentials
import Glibc

/// An HTTP answer: status, the headers delivery cares about, and the body.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    /// `Retry-After` in seconds (delta-seconds or an HTTP date), when present and a finite number of
    /// seconds (`inf`, `nan` and `1e999` are not).
    func retryAfter(now: Date = Date()) -> Double? {
        guard let value = headers["retry-after"]?.trimmingWhitespace() else { return nil }
        if let seconds = Double(value) { return seconds.isFinite ? max(0, seconds) : nil }
        // An HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT"), parsed by libcurl, which reads the three forms
        // RFC 9110 allows.
        let date = curl_getdate(value, nil)
        guard date >= 0 else { return nil }
        return max(0, Double(date) - now.timeIntervalSince1970)
    }
}

/// A transport failure: no HTTP answer (connect, TLS, timeout, connection dropped).
struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    var code: Int32
    var message: String
    var description: String { message }
    /// The wait for the answer ran out (`CURLOPT_TIMEOUT_MS`): the API may have written the request.
    var timedOut: Bool { code == Int32(CURLE_OPERATION_TIMEDOUT.rawValue) }
}

/// One request to send: where, with which headers, and the body (already compressed if it is).
struct HTTPRequest: Sendable {
    var url: String
    var headers: [String]
    var body: [UInt8]
    var timeout: HumanDuration
}

/// Requests in flight together over libcurl's multi interface: connections are kept alive and reused
/// across requests, and HTTP/2 streams are multiplexed on one connection when the server offers it.
///
/// TLS peers are verified; proxies come from the standard environment variables (`https_proxy`,
/// `http_proxy`, `no_proxy`), which libcurl reads itself. Driven by one thread (the delivery loop), which
/// alone calls ``start(_:id:)`` and ``run(timeout:)``; any thread may call ``wakeUp()``.
///
/// - Important: The API key goes only into the `Authorization` header. libcurl's error texts never
///   include request headers, and this type never logs them.
final class HTTPMultiClient {
    /// A request that ended: its answer, or why there is none, and how long it took.
    struct Completion {
        var id: Int
        var result: Result<HTTPResponse, HTTPTransportError>
        var elapsed: Duration
    }

    private final class Transfer {
        let id: Int
        let handle: UnsafeMutableRawPointer
        let headers: UnsafeMutablePointer<curl_slist>?
        let collector = ResponseCollector()
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        let started = ContinuousClock.now

        init(id: Int, handle: UnsafeMutableRawPointer, headers: UnsafeMutablePointer<curl_slist>?) {
            self.id = id
            self.handle = handle
            self.headers = headers
            errorBuffer[0] = 0
        }

        deinit {
            curl_slist_free_all(headers)
            errorBuffer.deallocate()
        }
    }

    private let multi: UnsafeMutableRawPointer
    private var transfers: [Int: Transfer] = [:]
    /// Easy handles of finished transfers, reset and reused (their TLS session caches go with them).
    private var idle: [UnsafeMutableRawPointer] = []
    let userAgent = "definite-agent/\(AgentVersion.current)"

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_ALL)) }()

    /// - Parameter maxConnections: connections kept to the API at most (requests beyond wait for one).
    init(maxConnections: Int) {
        _ = Self.globalInit
        guard let multi = curl_multi_init() else { fatalError("curl_multi_init failed: out of memory") }
        self.multi = multi
        ccurl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        ccurl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxConnections)
        ccurl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, maxConnections)
    }

    deinit {
        for transfer in transfers.values {
            curl_multi_remove_handle(multi, transfer.handle)
            curl_easy_cleanup(transfer.handle)
        }
        for handle in idle { curl_easy_cleanup(handle) }
        curl_multi_cleanup(multi)
    }

    /// Requests started and not yet ended.
    var inFlight: Int { transfers.count }

    /// Starts `request`; its ``Completion`` comes from a later ``run(timeout:)`` with the same `id`.
    func start(_ request: HTTPRequest, id: Int) {
        let handle = idle.popLast() ?? curl_easy_init()
        guard let handle else { fatalError("curl_easy_init failed: out of memory") }
        var headers: UnsafeMutablePointer<curl_slist>?
        for header in request.headers + ["Expect:"] { headers = curl_slist_append(headers, header) }  // no 100-continue
        let transfer = Transfer(id: id, handle: handle, headers: headers)
        let timeout = Int(request.timeout.milliseconds)
        // libcurl copies the strings and, with COPYPOSTFIELDS, the body: nothing here must outlive the call.
        ccurl_easy_setopt_ptr(handle, CURLOPT_URL, request.url)
        ccurl_easy_setopt_ptr(handle, CURLOPT_USERAGENT, userAgent)
        ccurl_easy_setopt_ptr(handle, CURLOPT_HTTPHEADER, headers)
        ccurl_easy_setopt_ptr(handle, CURLOPT_ERRORBUFFER, transfer.errorBuffer)
        ccurl_easy_setopt_long(handle, CURLOPT_POST, 1)
        ccurl_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
        _ = request.body.withUnsafeBytes { body in
            ccurl_easy_setopt_ptr(handle, CURLOPT_COPYPOSTFIELDS, body.baseAddress ?? UnsafeRawPointer(bitPattern: 1))
        }
        ccurl_easy_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
        // Over TLS, wait for ALPN to say whether HTTP/2 streams can share a connection before opening more;
        // over plain HTTP (HTTP/1.1) that would wait for a whole first answer.
        ccurl_easy_setopt_long(handle, CURLOPT_PIPEWAIT, request.url.hasPrefix("https:") ? 1 : 0)
        ccurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        ccurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        ccurl_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        ccurl_easy_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
        ccurl_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, min(timeout, 10_000))
        ccurl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, timeout)
        let collector = Unmanaged.passUnretained(transfer.collector).toOpaque()
        ccurl_easy_setopt_ptr(handle, CURLOPT_WRITEDATA, collector)
        ccurl_easy_setopt_ptr(handle, CURLOPT_HEADERDATA, collector)
        ccurl_easy_setopt_write_function(handle, ResponseCollector.writeBody)
        ccurl_easy_setopt_header_function(handle, ResponseCollector.writeHeader)
        ccurl_easy_setopt_ptr(handle, CURLOPT_PRIVATE, UnsafeRawPointer(bitPattern: id + 1))
        transfers[id] = transfer
        curl_multi_add_handle(multi, handle)
    }

    /// Moves every transfer on and returns those that ended. When none has, waits up to `timeout` for
    /// socket activity or a ``wakeUp()`` first.
    func run(timeout: Duration) -> [Completion] {
        var running: Int32 = 0
        curl_multi_perform(multi, &running)
        var completions = collect()
        guard completions.isEmpty else { return completions }
        let milliseconds = Int32(
            clamping: max(0, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        curl_multi_poll(multi, nil, 0, milliseconds, nil)
        curl_multi_perform(multi, &running)
        completions = collect()
        return completions
    }

    /// Makes a ``run(timeout:)`` in progress return now. Safe from any thread.
    func wakeUp() {
        curl_multi_wakeup(multi)
    }

    /// Abandons every request in flight (their answers are never read).
    func cancelAll() {
        for transfer in transfers.values { finish(transfer) }
        transfers.removeAll()
    }

    private func collect() -> [Completion] {
        var completions: [Completion] = []
        var easy: UnsafeMutableRawPointer?
        var code = CURLE_OK
        while ccurl_multi_next_done(multi, &easy, &code) == 1 {
            guard let easy else { continue }
            var privateValue: UnsafeMutableRawPointer?
            ccurl_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &privateValue)
            guard let id = privateValue.map({ Int(bitPattern: $0) - 1 }), let transfer = transfers.removeValue(forKey: id) else { continue }
            let elapsed = ContinuousClock.now - transfer.started
            if code == CURLE_OK {
                var status = 0
                ccurl_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
                completions.append(
                    Completion(
                        id: id,
                        result: .success(
                            HTTPResponse(
                                status: status, headers: transfer.collector.headers, body: transfer.collector.body)), elapsed: elapsed))
            } else {
                let detail = String(cString: transfer.errorBuffer)
                let summary = String(cString: curl_easy_strerror(code))
                completions.append(
                    Completion(
                        id: id,
                        result: .failure(
                            HTTPTransportError(
                                code: Int32(code.rawValue), message: detail.isEmpty ? summary : "\(summary): \(detail)")), elapsed: elapsed)
                )
            }
            finish(transfer)
        }
        return completions
    }

    private func finish(_ transfer: Transfer) {
        curl_multi_remove_handle(multi, transfer.handle)
        curl_easy_reset(transfer.handle)
        if idle.count < 16 { idle.append(transfer.handle) } else { curl_easy_cleanup(transfer.handle) }
    }
}

/// Receives libcurl's callbacks for one request.
private final class ResponseCollector {
    var body: [UInt8] = []
    var headers: [String: String] = [:]
    /// Bodies beyond this are cut: the API's answers are small, and a hostile one must not grow memory.
    static let maxBody = 1 << 20

    static let writeBody: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
        data, size, count, user in
        guard let data, let user else { return 0 }
        let collector = Unmanaged<ResponseCollector>.fromOpaque(user).takeUnretainedValue()
        let length = size * count
        if collector.body.count < maxBody {
            data.withMemoryRebound(to: UInt8.self, capacity: length) {
                collector.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: min(length, maxBody - collector.body.count)))
            }
        }
        return length
    }

    static let writeHeader: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = {
        data, size, count, user in
        guard let data, let user else { return 0 }
        let collector = Unmanaged<ResponseCollector>.fromOpaque(user).takeUnretainedValue()
        let length = size * count
        let line = data.withMemoryRebound(to: UInt8.self, capacity: length) {
            String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
        }
        if line.hasPrefix("HTTP/") {
            collector.headers.removeAll()  // a new response (after a redirect or 100 Continue)
        } else if let colon = line.firstIndex(of: ":") {
            let name = line[..<colon].lowercased()
            collector.headers[name] = line[line.index(after: colon)...].trimmingWhitespace()
        }
        return length
    }
}

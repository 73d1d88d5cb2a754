import CCurl
import Foundation

/// An HTTP answer: status, the headers delivery cares about, and the body.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    /// `Retry-After` in seconds (delta-seconds or an HTTP date), when present.
    func retryAfter(now: Date = Date()) -> Double? {
        guard let value = headers["retry-after"]?.trimmingWhitespace() else { return nil }
        if let seconds = Double(value) { return max(0, seconds) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: value) else { return nil }
        return max(0, date.timeIntervalSince(now))
    }
}

/// A transport failure: no HTTP answer (connect, TLS, timeout, connection dropped).
struct HTTPTransportError: Error, CustomStringConvertible, Sendable {
    var code: Int32
    var message: String
    var description: String { message }
}

/// One libcurl easy handle, reused for every request so the connection is kept alive (HTTP/1.1
/// keep-alive, or HTTP/2 when the server offers it over TLS).
///
/// TLS peers are verified; proxies come from the standard environment variables (`https_proxy`,
/// `http_proxy`, `no_proxy`), which libcurl reads itself. Not thread-safe: one delivery worker owns each.
///
/// - Important: The API key goes only into the `Authorization` header. libcurl's error texts never
///   include request headers, and this type never logs them.
final class HTTPClient {
    private let handle: UnsafeMutableRawPointer
    private var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
    let userAgent: String

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_ALL)) }()

    init() {
        _ = Self.globalInit
        guard let handle = curl_easy_init() else { fatalError("curl_easy_init failed: out of memory") }
        self.handle = handle
        self.userAgent = "definite-agent/\(AgentVersion.current)"
    }

    deinit { curl_easy_cleanup(handle) }

    /// POSTs `body` to `url` and returns the answer, or throws a transport error.
    func post(url: String, headers: [String], body: [UInt8], timeout: HumanDuration) throws(HTTPTransportError) -> HTTPResponse {
        curl_easy_reset(handle)
        var list: UnsafeMutablePointer<curl_slist>?
        for header in headers { list = curl_slist_append(list, header) }
        list = curl_slist_append(list, "Expect:")  // no 100-continue round trip
        defer { curl_slist_free_all(list) }

        let collector = ResponseCollector()
        let unmanaged = Unmanaged.passRetained(collector)
        defer { unmanaged.release() }

        let code: CURLcode = url.withCString { urlPointer in
            userAgent.withCString { agentPointer in
                body.withUnsafeBytes { bodyRaw in
                    errorBuffer.withUnsafeMutableBufferPointer { errorPointer in
                        errorPointer[0] = 0
                        ccurl_easy_setopt_ptr(handle, CURLOPT_URL, urlPointer)
                        ccurl_easy_setopt_ptr(handle, CURLOPT_USERAGENT, agentPointer)
                        ccurl_easy_setopt_ptr(handle, CURLOPT_HTTPHEADER, list)
                        ccurl_easy_setopt_ptr(handle, CURLOPT_ERRORBUFFER, errorPointer.baseAddress)
                        ccurl_easy_setopt_long(handle, CURLOPT_POST, 1)
                        ccurl_easy_setopt_ptr(handle, CURLOPT_POSTFIELDS, bodyRaw.baseAddress ?? UnsafeRawPointer(bitPattern: 1))
                        ccurl_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(bodyRaw.count))
                        ccurl_easy_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
                        ccurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
                        ccurl_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
                        ccurl_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
                        ccurl_easy_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
                        ccurl_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(min(timeout.milliseconds, 10_000)))
                        ccurl_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(timeout.milliseconds))
                        ccurl_easy_setopt_ptr(handle, CURLOPT_WRITEDATA, unmanaged.toOpaque())
                        ccurl_easy_setopt_ptr(handle, CURLOPT_HEADERDATA, unmanaged.toOpaque())
                        ccurl_easy_setopt_write_function(handle, ResponseCollector.writeBody)
                        ccurl_easy_setopt_header_function(handle, ResponseCollector.writeHeader)
                        return curl_easy_perform(handle)
                    }
                }
            }
        }
        guard code == CURLE_OK else {
            let detail = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            let summary = String(cString: curl_easy_strerror(code))
            throw HTTPTransportError(code: Int32(code.rawValue), message: detail.isEmpty ? summary : "\(summary): \(detail)")
        }
        var status = 0
        ccurl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: collector.headers, body: collector.body)
    }
}

/// Receives libcurl's callbacks for one request.
private final class ResponseCollector {
    var body: [UInt8] = []
    var headers: [String: String] = [:]
    /// Bodies beyond this are cut: the API's answers are small, and a hostile one must not grow memory.
    static let maxBody = 1 << 20

    static let writeBody: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = { data, size, count, user in
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

    static let writeHeader: @convention(c) (UnsafeMutablePointer<CChar>?, Int, Int, UnsafeMutableRawPointer?) -> Int = { data, size, count, user in
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

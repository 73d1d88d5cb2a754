import Foundation

/// Builds a Stream API request from spooled records by concatenating their stored JSON: records are
/// never decoded and re-encoded.
struct RequestBody {
    var bytes: [UInt8]
    var contentType: String
    /// Extra query string for the URL (NDJSON carries its config there).
    var query: String
    var compressed: Bool

    /// The request's `config` object: the target, plus the batch id and host in `tags` for tracing.
    static func configJSON(target: SpoolTarget, batchID: String, host: String) -> String {
        var config = "{\"table\":\(JSONCompactor.quote(target.table)),\"mode\":\"\(target.mode.rawValue)\""
        if target.mode == .merge { config += ",\"primary_key\":[\(JSONCompactor.quote(target.primaryKey))]" }
        config += ",\"tags\":\(tags(target: target, batchID: batchID, host: host))}"
        return config
    }

    static func tags(target: SpoolTarget, batchID: String, host: String) -> String {
        let ours = "\"agent_batch\":\(JSONCompactor.quote(batchID)),\"agent_host\":\(JSONCompactor.quote(host))"
        guard target.tags.count > 2 else { return "{\(ours)}" }
        return "{" + target.tags.dropFirst().dropLast() + "," + ours + "}"
    }

    /// The body for `indexes` of `records` (in that order).
    static func make(
        records: SpooledRecords, indexes: [Int], target: SpoolTarget, batchID: String, host: String,
        format: AgentConfiguration.BodyFormat, compression: AgentConfiguration.Compression, gzipLevel: Int
    ) throws -> RequestBody {
        var body: [UInt8] = []
        var query = ""
        let contentType: String
        switch format {
        case .json:
            contentType = "application/json"
            body.reserveCapacity(indexes.reduce(64) { $0 + records.ranges[$1].count + 1 })
            body.append(contentsOf: Array("{\"data\":[".utf8))
            for (n, i) in indexes.enumerated() {
                if n > 0 { body.append(UInt8(ascii: ",")) }
                body.append(contentsOf: records.record(i))
            }
            body.append(contentsOf: Array("],\"config\":\(configJSON(target: target, batchID: batchID, host: host))}".utf8))
        case .ndjson:
            contentType = "application/x-ndjson"
            body.reserveCapacity(indexes.reduce(0) { $0 + records.ranges[$1].count + 1 })
            for i in indexes {
                body.append(contentsOf: records.record(i))
                body.append(UInt8(ascii: "\n"))
            }
            var items = [URLQueryItem(name: "table", value: target.table), URLQueryItem(name: "mode", value: target.mode.rawValue)]
            if target.mode == .merge { items.append(URLQueryItem(name: "primary_key", value: target.primaryKey)) }
            items.append(URLQueryItem(name: "tags", value: tags(target: target, batchID: batchID, host: host)))
            var components = URLComponents()
            components.queryItems = items
            query = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B") ?? ""
        }
        if compression == .gzip {
            return RequestBody(bytes: try Gzip.compress(body, level: gzipLevel), contentType: contentType, query: query, compressed: true)
        }
        return RequestBody(bytes: body, contentType: contentType, query: query, compressed: false)
    }

    /// Size of the JSON envelope around the records, so batches can be cut under `[batch] max_bytes`.
    static let envelopeAllowance = 1024

    /// Indexes of the records to send for a merge target: for each primary key value only the last
    /// write, in order. Upserts applied in order give exactly that, and the API refuses a request with a
    /// key twice.
    static func lastWritePerKey(_ records: SpooledRecords, primaryKey: String) -> [Int] {
        var lastIndex: [ArraySlice<UInt8>: Int] = [:]
        var keys: [ArraySlice<UInt8>?] = []
        keys.reserveCapacity(records.count)
        records.bytes.withUnsafeBytes { raw in
            for i in 0..<records.count {
                let key = keyValue(UnsafeRawBufferPointer(rebasing: raw[records.ranges[i]]), primaryKey: primaryKey)
                    .map { records.bytes[(records.ranges[i].lowerBound + $0.lowerBound)..<(records.ranges[i].lowerBound + $0.upperBound)] }
                keys.append(key)
                if let key { lastIndex[key] = i }
            }
        }
        return (0..<records.count).filter { i in keys[i].map { lastIndex[$0] == i } ?? true }
    }

    /// The raw bytes (relative range) of the top-level `primaryKey` value of a stored record.
    static func keyValue(_ record: UnsafeRawBufferPointer, primaryKey: String) -> Range<Int>? {
        var scanner = JSONScanner(record)
        do {
            try scanner.beginObject()
            while let name = try scanner.nextMember() {
                let start = scanner.position
                try scanner.skipValue(depth: 2, maxDepth: 64)
                if scanner.string(name, equals: primaryKey) { return start..<scanner.position }
            }
        } catch {}
        return nil
    }
}

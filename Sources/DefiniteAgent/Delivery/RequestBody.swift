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
    ///
    /// When every record is sent in spool order (the usual case) the records' buffer is used as it is:
    /// gzip reads the envelope and the records as separate parts, so the uncompressed body is never built.
    static func make(
        records: SpooledRecords, indexes: [Int], target: SpoolTarget, batchID: String, host: String,
        format: AgentConfiguration.BodyFormat, compression: AgentConfiguration.Compression, gzipLevel: Int,
        reusing output: inout [UInt8]
    ) throws -> RequestBody {
        var prefix: [UInt8] = []
        var suffix: [UInt8] = []
        var query = ""
        let contentType: String
        switch format {
        case .json:
            contentType = "application/json"
            prefix = Array("{\"data\":[".utf8)
            suffix = Array("],\"config\":\(configJSON(target: target, batchID: batchID, host: host))}".utf8)
        case .ndjson:
            contentType = "application/x-ndjson"
            var items = [URLQueryItem(name: "table", value: target.table), URLQueryItem(name: "mode", value: target.mode.rawValue)]
            if target.mode == .merge { items.append(URLQueryItem(name: "primary_key", value: target.primaryKey)) }
            items.append(URLQueryItem(name: "tags", value: tags(target: target, batchID: batchID, host: host)))
            var components = URLComponents()
            components.queryItems = items
            query = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B") ?? ""
        }
        let selected = indexes.count == records.count && indexes.elementsEqual(0..<records.count)
            ? records : records.subset(indexes)
        // JSON: the records with their commas, less the last one. NDJSON: one record per line.
        let recordBytes = format == .json ? selected.bytes : selected.newlineSeparated
        let recordCount = format == .json ? max(0, recordBytes.count - 1) : recordBytes.count
        if compression == .gzip {
            try prefix.withUnsafeBytes { head in
                try suffix.withUnsafeBytes { tail in
                    try recordBytes.withUnsafeBytes { body in
                        try Gzip.compress(parts: [head, UnsafeRawBufferPointer(rebasing: body[0..<recordCount]), tail], level: gzipLevel, into: &output)
                    }
                }
            }
            return RequestBody(bytes: output, contentType: contentType, query: query, compressed: true)
        }
        var body = prefix
        body.reserveCapacity(prefix.count + recordCount + suffix.count)
        body.append(contentsOf: recordBytes[0..<recordCount])
        body.append(contentsOf: suffix)
        return RequestBody(bytes: body, contentType: contentType, query: query, compressed: false)
    }

    /// Size of the JSON envelope around the records, so batches can be cut under `[batch] max_bytes`.
    static let envelopeAllowance = 1024

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

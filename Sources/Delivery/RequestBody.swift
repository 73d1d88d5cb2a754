import Core
import FoundationEssentials
import Glibc
import Spool

/// Builds a Stream API request from spooled records by concatenating their stored JSON: records are
/// never decoded and re-encoded.
struct RequestBody {
    var bytes: [UInt8]
    var contentType: String
    /// Extra query string for the URL (NDJSON carries its config there).
    var query: String
    var compressed: Bool

    /// The request's `config` object: the target, `tags` (see ``tags(of:target:batchID:host:)``), and
    /// `wait` when a local request waits for these rows' snapshot.
    static func configJSON(target: SpoolTarget, tags: String, wait: Bool = false) -> String {
        var config = "{\"table\":\(JSONCompactor.quote(target.table)),\"mode\":\"\(target.mode.rawValue)\""
        if target.mode == .merge { config += ",\"primary_key\":[\(JSONCompactor.quote(target.primaryKey))]" }
        if wait { config += ",\"wait\":true" }
        return config + ",\"tags\":\(tags)}"
    }

    /// The request's `config.tags`: the agent's own keys (`agent_batch`, the batch id, the same on every
    /// retry; `agent_host`), and the tags the rows were written with:
    /// - when every row has the same tags, their members, as the writer sent them;
    /// - when rows have different tags, `client_tags`: `[{"from":i,"to":j,"tags":{…}}, …]`, one entry per run
    ///   of rows with the same tags, `from` and `to` indexing the request's `data` (`data[i..<j]`); rows
    ///   written without tags are in no run.
    static func tags(of rows: SpooledRecords, target: SpoolTarget, batchID: String, host: String) -> String {
        let ours = "\"agent_batch\":\(JSONCompactor.quote(batchID)),\"agent_host\":\(JSONCompactor.quote(host))"
        // A target of a version-1 spool has its tags; its rows have none of their own.
        let uniform =
            target.tags.isEmpty
            ? (rows.tagRuns.count == 1 && rows.tagRuns[0].first == 0 ? rows.tagRuns[0].tags : nil)
            : target.tags
        if let uniform, uniform.count > 2 { return "{" + uniform.dropFirst().dropLast() + "," + ours + "}" }
        let runs = rows.tagRunsJSON
        return runs.isEmpty ? "{\(ours)}" : "{\(ours),\"client_tags\":\(runs)}"
    }

    /// Tag bytes a batch may carry (each run of rows with other tags counts its tags and 32 bytes): a JSON
    /// body has room; NDJSON puts its config in the URL, which must stay short. Never more than an eighth
    /// of `[batch] max_bytes`, which is what the rows give up for it (a small `max_bytes` would otherwise
    /// leave the rows no room, and every batch would hold one row).
    static func tagBudget(_ format: AgentConfiguration.BodyFormat, maxBytes: Int) -> Int {
        min(format == .json ? 64 << 10 : 4 << 10, maxBytes / 8)
    }

    /// The body for `indexes` of `records` (in that order).
    ///
    /// When every record is sent in spool order (the usual case) the records' buffer is used as it is:
    /// gzip reads the envelope and the records as separate parts, so the uncompressed body is never built.
    static func make(
        records: SpooledRecords, indexes: [Int], target: SpoolTarget, batchID: String, host: String,
        format: AgentConfiguration.BodyFormat, compression: AgentConfiguration.Compression, gzipLevel: Int,
        wait: Bool = false, reusing output: inout [UInt8]
    ) throws -> RequestBody {
        var prefix: [UInt8] = []
        var suffix: [UInt8] = []
        var query = ""
        let contentType: String
        let selected =
            indexes.count == records.count && indexes.elementsEqual(0..<records.count)
            ? records : records.subset(indexes)
        let tags = tags(of: selected, target: target, batchID: batchID, host: host)
        switch format {
        case .json:
            contentType = "application/json"
            prefix = Array("{\"data\":[".utf8)
            suffix = Array("],\"config\":\(configJSON(target: target, tags: tags, wait: wait))}".utf8)
        case .ndjson:
            contentType = "application/x-ndjson"
            var items = [URLQueryItem(name: "table", value: target.table), URLQueryItem(name: "mode", value: target.mode.rawValue)]
            if target.mode == .merge { items.append(URLQueryItem(name: "primary_key", value: target.primaryKey)) }
            if wait { items.append(URLQueryItem(name: "wait", value: "true")) }
            items.append(URLQueryItem(name: "tags", value: tags))
            var components = URLComponents()
            components.queryItems = items
            query = components.percentEncodedQuery?.replacing("+", with: "%2B") ?? ""
        }
        // JSON: the records with their commas, less the last one. NDJSON: one record per line.
        let recordBytes = format == .json ? selected.commaSeparated : selected.newlineSeparated
        let recordCount = format == .json ? max(0, recordBytes.count - 1) : recordBytes.count
        if compression == .gzip {
            try prefix.withUnsafeBytes { head in
                try suffix.withUnsafeBytes { tail in
                    try recordBytes.withUnsafeBytes { body in
                        try Gzip.compress(
                            parts: [head, UnsafeRawBufferPointer(rebasing: body[0..<recordCount]), tail], level: gzipLevel, into: &output)
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
    static let envelopeAllowance = StreamAPILimits.requestEnvelopeBytes

    /// The raw bytes (relative range) of the top-level `primaryKey` value of a stored record.
    static func keyValue(_ record: UnsafeRawBufferPointer, primaryKey: String) -> Range<Int>? {
        JSONScanner.valueOfMember(primaryKey, in: record)
    }
}

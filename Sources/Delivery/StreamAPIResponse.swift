import Core

/// The fields of a Stream API answer that delivery acts on.
struct StreamAPIResponse: Sendable, Equatable {
    var success: Bool?
    var requestID: String?
    var snapshotID: String?
    var acceptedRows: Int?
    var successfulRows: Int?
    var rejectedRows: Int
    var errors: [String]
    var warnings: [String]

    /// Parses a JSON answer; a body that is not one gives empty fields (the status still decides).
    init(body: [UInt8]) {
        let value = body.withUnsafeBytes { try? JSONValue.parse($0) }
        func int(_ key: String) -> Int? {
            if case .number(let text)? = value?[key] { return Int(text) }
            return nil
        }
        func strings(_ key: String) -> [String] {
            guard case .array(let items)? = value?[key] else { return [] }
            return items.map { item in
                if case .string(let text) = item { return text }
                return JSONCompactor.render(item)
            }
        }
        if case .bool(let flag)? = value?["success"] { success = flag }
        if case .string(let id)? = value?["request_id"] { requestID = id }
        switch value?["snapshot_id"] {
        case .string(let id)?: snapshotID = id
        case .number(let id)?: snapshotID = id
        default: snapshotID = nil
        }
        acceptedRows = int("accepted")
        successfulRows = int("successful_rows")
        rejectedRows = int("rejected_rows") ?? 0
        errors = strings("errors")
        warnings = strings("warnings")
        if errors.isEmpty, value == nil, !body.isEmpty {
            errors = [String(decoding: body.prefix(512), as: UTF8.self)]
        }
    }

    /// A one-line summary of the server's errors for logs and `status`.
    var summary: String {
        let text = errors.prefix(3).joined(separator: "; ")
        return errors.count > 3 ? text + " (and \(errors.count - 3) more)" : text
    }
}

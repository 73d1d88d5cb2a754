import Core

/// The fields of a Stream API answer that delivery acts on.
struct StreamAPIResponse: Sendable, Equatable {
    var success: Bool?
    var requestID: String?
    var snapshotID: String?
    var acceptedRows: Int?
    var successfulRows: Int?
    /// `rejected_rows`; `nil` when the answer does not say.
    var rejectedRows: Int?
    var errors: [String]
    var warnings: [String]
    /// The body was not a whole JSON object: cut at the client's limit (many errors), or not JSON at all.
    /// Members read before the point where it stopped making sense are kept.
    var isIncomplete = false

    /// Parses a JSON answer. A body cut short keeps the members that came whole before the cut (the
    /// reference's order puts the counts before `errors`, the part that grows with the rows); a body that
    /// is not JSON gives empty fields and its first bytes as the error (the status still decides).
    init(body: [UInt8]) {
        let members: [(String, JSONValue)]
        if case .object(let whole)? = body.withUnsafeBytes({ try? JSONValue.parse($0) }) {
            members = whole
        } else {
            members = body.withUnsafeBytes(Self.membersBeforeTheCut)
            isIncomplete = true
        }
        let value = JSONValue.object(members)
        func int(_ key: String) -> Int? {
            if case .number(let text)? = value[key] { return Int(text) }
            return nil
        }
        func strings(_ key: String) -> [String] {
            guard case .array(let items)? = value[key] else { return [] }
            return items.map { item in
                if case .string(let text) = item { return text }
                return JSONCompactor.render(item)
            }
        }
        if case .bool(let flag)? = value["success"] { success = flag }
        if case .string(let id)? = value["request_id"] { requestID = id }
        switch value["snapshot_id"] {
        case .string(let id)?: snapshotID = id
        case .number(let id)?: snapshotID = id
        default: snapshotID = nil
        }
        acceptedRows = int("accepted")
        successfulRows = int("successful_rows")
        rejectedRows = int("rejected_rows")
        errors = strings("errors")
        warnings = strings("warnings")
        if errors.isEmpty, members.isEmpty, !body.isEmpty {
            errors = [String(decoding: body.prefix(512), as: UTF8.self)]
        }
    }

    /// How many of `sent` rows the answer says were not written: `rejected_rows`, else what
    /// `successful_rows` leaves out; `nil` when it does not tell what was written (see
    /// ``unknownWritten(of:)``).
    func rejected(of sent: Int) -> Int? {
        guard unknownWritten(of: sent) == nil else { return nil }
        if let rejectedRows { return rejectedRows }
        if let successfulRows { return sent - successfulRows }
        return nil
    }

    /// Why the answer does not tell what of `sent` rows was written, or `nil` when it does: it has neither
    /// count, or counts that cannot be (negative, more than were sent, not adding up to what was sent), or
    /// says `success: false` with nothing rejected. Taking such an answer for "all written" could lose
    /// every row.
    func unknownWritten(of sent: Int) -> String? {
        guard rejectedRows != nil || successfulRows != nil else { return "without rejected_rows or successful_rows" }
        for (name, count) in [("rejected_rows", rejectedRows), ("successful_rows", successfulRows)] {
            if let count, count < 0 || count > sent { return "with \(name) \(count) for \(sent) rows sent" }
        }
        if let rejectedRows, let successfulRows, rejectedRows + successfulRows != sent {
            return "with rejected_rows \(rejectedRows) and successful_rows \(successfulRows) for \(sent) rows sent"
        }
        if success == false, (rejectedRows ?? (sent - (successfulRows ?? 0))) == 0 {
            return "with success false and no rows rejected"
        }
        return nil
    }

    /// A one-line summary of the server's errors for logs and `status`.
    var summary: String {
        let text = errors.prefix(3).joined(separator: "; ")
        return errors.count > 3 ? text + " (and \(errors.count - 3) more)" : text
    }

    /// The top-level members of a JSON object that come whole before the body stops being JSON (a cut, or
    /// garbage); none when it does not start as an object.
    private static func membersBeforeTheCut(_ bytes: UnsafeRawBufferPointer) -> [(String, JSONValue)] {
        var scanner = JSONScanner(bytes)
        var members: [(String, JSONValue)] = []
        do {
            try scanner.beginObject()
            while let name = try scanner.nextMember() {
                let start = scanner.position
                try scanner.skipValue(depth: 1, maxDepth: 32)
                let end = scanner.position
                // Whole only if something follows it: a number cut short (`"rejected_rows":30|0`) still
                // scans as a number.
                scanner.skipWhitespace()
                guard let next = scanner.peek(), next == UInt8(ascii: ",") || next == UInt8(ascii: "}") else { break }
                let value = try JSONValue.parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                members.append((scanner.decode(name), value))
            }
        } catch {
            // Cut here: what came before stands.
        }
        return members
    }
}

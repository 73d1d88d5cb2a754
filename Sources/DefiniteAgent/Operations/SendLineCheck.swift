/// How `definite-agent send` checks an input line before it goes into a request of many lines: by the
/// agent's own rules for a row of `data`, so that the agent does not refuse the request for one line (and
/// a line cannot change the request it is wrapped in), with the agent's scanner.
enum SendLineCheck {
    /// Why the agent would refuse `line` as a row, or `nil`: anything but one JSON object, invalid UTF-8,
    /// nesting deeper than the Stream API's limit, a field over its size limit, and — when the table
    /// merges on `mergeKey` — a missing or null key. The same rules, codes and order as the agent's.
    static func problem(_ line: UnsafeRawBufferPointer, mergeKey: String? = nil) -> IntakeRejection? {
        var scanner = JSONScanner(line)
        do throws(JSONScanError) {
            scanner.skipWhitespace()
            guard scanner.peek() == UInt8(ascii: "{") else {
                if scanner.isAtEnd { throw scanner.unexpected("a JSON object") }
                return .badRequest(.invalidRow, "each line must be a JSON object")
            }
            if mergeKey == nil, line.count <= StreamAPILimits.maxFieldBytes {
                // No field can be over the limit and no key is looked for: one pass over the object.
                try scanner.skipValue(depth: 1, maxDepth: StreamAPILimits.maxDepth)
            } else if let problem = try memberProblem(&scanner, mergeKey: mergeKey) {
                return problem
            }
            scanner.skipWhitespace()
            guard scanner.isAtEnd else { throw scanner.unexpected("end of line after the JSON object") }
            return nil
        } catch {
            return IntakeLineParser.rejection(for: error, row: nil)
        }
    }

    /// Walks a row's members as the agent does: each field's compact size, and the merge key.
    private static func memberProblem(_ scanner: inout JSONScanner, mergeKey: String?) throws(JSONScanError) -> IntakeRejection? {
        var keyPresent = mergeKey == nil
        try scanner.beginObject()
        while let name = try scanner.nextMember() {
            if let mergeKey, !keyPresent, scanner.string(name, equals: mergeKey), scanner.peek() != UInt8(ascii: "n") {
                keyPresent = true
            }
            let valueStart = scanner.position
            let whitespaceBefore = scanner.whitespace
            try scanner.skipValue(depth: 2, maxDepth: StreamAPILimits.maxDepth)
            let bytes = scanner.position - valueStart - (scanner.whitespace - whitespaceBefore)
            if bytes > StreamAPILimits.maxFieldBytes {
                return .tooLarge(.fieldTooLarge, "field \"\(scanner.decode(name))\" is \(bytes) bytes; the Stream API allows at most \(StreamAPILimits.maxFieldBytes) per field")
            }
        }
        guard keyPresent else {
            return .badRequest(.missingPrimaryKey, "primary key \"\(mergeKey ?? "")\" is missing or null; merge needs it in every row")
        }
        return nil
    }
}

/// A small JSON tree, built only for the few small objects the agent must read (a request's `config`).
/// Records themselves are never decoded into one.
package enum JSONValue: Equatable, Sendable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    /// The number's literal text, exactly as written.
    case number(String)
    case bool(Bool)
    case null

    package subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last { $0.0 == key }?.1
    }

    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.object(let a), .object(let b)): a.elementsEqual(b) { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.array(let a), .array(let b)): a == b
        case (.string(let a), .string(let b)): a == b
        case (.number(let a), .number(let b)): a == b
        case (.bool(let a), .bool(let b)): a == b
        case (.null, .null): true
        default: false
        }
    }

    /// Parses one JSON value from `bytes`, which must hold nothing else but whitespace.
    package static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 32) throws(JSONScanError) -> JSONValue {
        var scanner = JSONScanner(bytes)
        let value = try parseValue(&scanner, depth: 1, maxDepth: maxDepth)
        scanner.skipWhitespace()
        guard scanner.isAtEnd else { throw scanner.unexpected("end of input") }
        return value
    }

    private static func parseValue(_ s: inout JSONScanner, depth: Int, maxDepth: Int) throws(JSONScanError) -> JSONValue {
        s.skipWhitespace()
        let start = s.position
        switch s.peek() {
        case UInt8(ascii: "{"):
            guard depth <= maxDepth else { throw s.error("nesting depth exceeds \(maxDepth)", kind: .tooDeep) }
            var members: [(String, JSONValue)] = []
            var inner = s
            try inner.beginObject()
            while let name = try inner.nextMember() {
                members.append((inner.decode(name), try parseValue(&inner, depth: depth + 1, maxDepth: maxDepth)))
            }
            s.position = inner.position
            s.whitespace = inner.whitespace
            return .object(members)
        case UInt8(ascii: "["):
            guard depth <= maxDepth else { throw s.error("nesting depth exceeds \(maxDepth)", kind: .tooDeep) }
            s.position += 1
            var elements: [JSONValue] = []
            s.skipWhitespace()
            if s.peek() == UInt8(ascii: "]") {
                s.position += 1
                return .array([])
            }
            while true {
                elements.append(try parseValue(&s, depth: depth + 1, maxDepth: maxDepth))
                s.skipWhitespace()
                guard let byte = s.peek() else { throw s.unexpected("',' or ']'") }
                s.position += 1
                if byte == UInt8(ascii: "]") { return .array(elements) }
                guard byte == UInt8(ascii: ",") else {
                    s.position -= 1
                    throw s.unexpected("',' or ']'")
                }
            }
        case UInt8(ascii: "\""):
            let span = try s.scanString()
            return .string(s.decode(span))
        default:
            switch try s.skipValue(depth: depth, maxDepth: maxDepth) {
            case .literalTrue: return .bool(true)
            case .literalFalse: return .bool(false)
            case .null: return .null
            default:
                return .number(String(decoding: UnsafeRawBufferPointer(rebasing: s.bytes[start..<s.position]), as: UTF8.self))
            }
        }
    }
}

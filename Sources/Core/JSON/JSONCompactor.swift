/// Writes validated JSON without insignificant whitespace.
package enum JSONCompactor {
    /// Appends `bytes[range]` to `output`, dropping whitespace outside strings. `whitespace` is how many
    /// such bytes the scanner counted in the range: when it is zero (the usual case) this is one copy.
    package static func append(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, whitespace: Int, to output: inout [UInt8]) {
        let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
        guard whitespace > 0 else {
            output.append(contentsOf: slice)
            return
        }
        // Room for the compact bytes, growing as `append` would (doubling): reserving exactly what this
        // record needs made every record with whitespace (`json.dumps`'s `", "` and `": "`) copy the whole
        // batch before it into a new buffer, quadratic in the batch.
        let needed = output.count + slice.count - whitespace
        if output.capacity < needed { output.reserveCapacity(max(needed, output.capacity * 2)) }
        var inString = false
        var escaped = false
        for byte in slice {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                output.append(byte)
                continue
            }
            switch byte {
            case 0x20, 0x09, 0x0A, 0x0D: continue
            case UInt8(ascii: "\""): inString = true
            default: break
            }
            output.append(byte)
        }
    }

    /// Renders a small JSON value compactly (used for tags, never for records).
    package static func render(_ value: JSONValue) -> String {
        switch value {
        case .object(let members):
            return "{" + members.map { quote($0.0) + ":" + render($0.1) }.joined(separator: ",") + "}"
        case .array(let elements):
            return "[" + elements.map(render).joined(separator: ",") + "]"
        case .string(let text): return quote(text)
        case .number(let text): return text
        case .bool(let flag): return flag ? "true" : "false"
        case .null: return "null"
        }
    }

    /// A JSON string literal for `text`.
    package static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

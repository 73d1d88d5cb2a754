/// Why a byte sequence is not acceptable JSON: where, and what was wrong.
package struct JSONScanError: Error, Sendable, Equatable {
    package enum Kind: Sendable, Equatable {
        case syntax
        case invalidUTF8
        case tooDeep
    }

    package var kind: Kind
    /// Byte offset into the scanned buffer.
    package var offset: Int
    package var reason: String
}

/// A single-pass validator over the bytes of one JSON text.
///
/// It checks JSON syntax (RFC 8259), UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF,
/// no unpaired `\u` surrogate escapes), and nesting depth, without building any object: the intake path
/// validates hundreds of megabytes a second with it. Callers walk objects member by member with
/// ``beginObject()``/``nextMember()`` and skip or inspect values with ``skipValue(depth:maxDepth:)``.
///
/// Insignificant whitespace is counted in ``whitespace`` so that the compact size of any value is its
/// span minus the whitespace skipped inside it, without a second pass.
package struct JSONScanner {
    package let bytes: UnsafeRawBufferPointer
    package var position = 0
    /// Insignificant whitespace bytes skipped so far.
    package var whitespace = 0
    /// ``whitespace`` as it was right after the name of the member ``nextMember()`` last returned, so a
    /// caller can tell the compact size of the whole member (name through value).
    package private(set) var whitespaceAtMemberName = 0

    package init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    package var isAtEnd: Bool { position >= bytes.count }

    @inline(__always)
    package func peek() -> UInt8? { position < bytes.count ? bytes[position] : nil }

    @inline(__always)
    package mutating func skipWhitespace() {
        let start = position
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default:
                whitespace += position - start
                return
            }
        }
        whitespace += position - start
    }

    package func error(_ reason: String, at offset: Int? = nil, kind: JSONScanError.Kind = .syntax) -> JSONScanError {
        JSONScanError(kind: kind, offset: offset ?? position, reason: reason)
    }

    package func unexpected(_ expected: String) -> JSONScanError {
        guard let byte = peek() else { return error("unexpected end of input, expected \(expected)") }
        let shown = byte >= 0x20 && byte < 0x7F ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
        return error("unexpected \(shown), expected \(expected)")
    }

    // MARK: Values

    /// The kind of value that starts at the current position (after whitespace).
    package enum ValueKind: Equatable {
        case object, array, string, number, literalTrue, literalFalse, null
    }

    /// Skips one value, validating it. `depth` is the depth a container starting here would have.
    @discardableResult
    package mutating func skipValue(depth: Int, maxDepth: Int) throws(JSONScanError) -> ValueKind {
        skipWhitespace()
        guard let byte = peek() else { throw unexpected("a value") }
        switch byte {
        case UInt8(ascii: "{"):
            try skipContainer(object: true, depth: depth, maxDepth: maxDepth)
            return .object
        case UInt8(ascii: "["):
            try skipContainer(object: false, depth: depth, maxDepth: maxDepth)
            return .array
        case UInt8(ascii: "\""):
            _ = try scanString()
            return .string
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .literalTrue
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .literalFalse
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try scanNumber()
            return .number
        default:
            throw unexpected("a value")
        }
    }

    /// Skips one value by its outline only: strings are scanned and validated (so a bracket inside one
    /// does not count), brackets are matched at any depth, and nothing else is checked. It keeps no stack
    /// and does not recurse, so no nesting is too deep for it.
    ///
    /// For a line already refused for what it says (too deep, a bad config, …): the members after the
    /// point of refusal can still be found, e.g. its `"ack"`. The span it skips is exact for valid JSON.
    package mutating func skipValueOutline() throws(JSONScanError) {
        skipWhitespace()
        guard let first = peek() else { throw unexpected("a value") }
        switch first {
        case UInt8(ascii: "\""):
            _ = try scanString()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            repeat {
                guard let byte = peek() else { throw unexpected("the end of a value") }
                switch byte {
                case UInt8(ascii: "\""): _ = try scanString()
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                    position += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    position += 1
                default: position += 1
                }
            } while depth > 0
        default:
            // A number or a literal: up to the next delimiter.
            let start = position
            while let byte = peek(), !Self.endsScalar(byte) { position += 1 }
            guard position > start else { throw unexpected("a value") }
        }
    }

    @inline(__always)
    private static func endsScalar(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D: true
        default: false
        }
    }

    private mutating func skipContainer(object: Bool, depth: Int, maxDepth: Int) throws(JSONScanError) {
        guard depth <= maxDepth else {
            throw error("nesting depth exceeds \(maxDepth)", kind: .tooDeep)
        }
        let close = object ? UInt8(ascii: "}") : UInt8(ascii: "]")
        position += 1
        skipWhitespace()
        if peek() == close {
            position += 1
            return
        }
        while true {
            if object {
                skipWhitespace()
                guard peek() == UInt8(ascii: "\"") else { throw unexpected("a member name in quotes") }
                _ = try scanString()
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw unexpected("':'") }
                position += 1
            }
            try skipValue(depth: depth + 1, maxDepth: maxDepth)
            skipWhitespace()
            guard let byte = peek() else { throw unexpected(object ? "',' or '}'" : "',' or ']'") }
            position += 1
            if byte == close { return }
            guard byte == UInt8(ascii: ",") else {
                position -= 1
                throw unexpected(object ? "',' or '}'" : "',' or ']'")
            }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONScanError) {
        let count = literal.utf8CodeUnitCount
        guard position + count <= bytes.count else { throw error("invalid literal, expected \(literal)") }
        let expected = UnsafeRawBufferPointer(start: literal.utf8Start, count: count)
        for i in 0..<count where bytes[position + i] != expected[i] {
            throw error("invalid literal, expected \(literal)")
        }
        position += count
    }

    private mutating func scanNumber() throws(JSONScanError) {
        let start = position
        if peek() == UInt8(ascii: "-") { position += 1 }
        guard let first = peek(), isDigit(first) else { throw error("invalid number", at: start) }
        if first == UInt8(ascii: "0") {
            position += 1
            if let next = peek(), isDigit(next) { throw error("invalid number: leading zero", at: start) }
        } else {
            skipDigits()
        }
        if peek() == UInt8(ascii: ".") {
            position += 1
            guard let next = peek(), isDigit(next) else { throw error("invalid number: digit expected after '.'", at: start) }
            skipDigits()
        }
        if let e = peek(), e | 0x20 == UInt8(ascii: "e") {
            position += 1
            if let sign = peek(), sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { position += 1 }
            guard let next = peek(), isDigit(next) else { throw error("invalid number: digit expected in exponent", at: start) }
            skipDigits()
        }
    }

    @inline(__always)
    private func isDigit(_ byte: UInt8) -> Bool { byte &- UInt8(ascii: "0") < 10 }

    @inline(__always)
    private mutating func skipDigits() {
        while position < bytes.count, isDigit(bytes[position]) { position += 1 }
    }

    // MARK: Strings

    /// A scanned string: the bytes between its quotes, and whether any escape occurs in them.
    package struct StringSpan {
        package var start: Int
        package var end: Int
        package var hasEscapes: Bool
        package var count: Int { end - start }

        package init(start: Int, end: Int, hasEscapes: Bool) {
            self.start = start
            self.end = end
            self.hasEscapes = hasEscapes
        }
    }

    /// Scans a string starting at its opening quote, validating escapes and UTF-8.
    ///
    /// Plain ASCII, by far the most common content, is skipped eight bytes at a time; only a quote, a
    /// backslash, a control character or a non-ASCII byte stops the word loop for a closer look.
    package mutating func scanString() throws(JSONScanError) -> StringSpan {
        position += 1
        let start = position
        var hasEscapes = false
        let count = bytes.count
        while true {
            while position + 8 <= count {
                let word = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: UInt64.self))
                let flagged = Self.bytesNeedingALook(word)
                if flagged == 0 {
                    position += 8
                    continue
                }
                // The lowest flagged byte is exact (borrows in the word arithmetic only reach bytes above it).
                position += flagged.trailingZeroBitCount >> 3
                break
            }
            guard position < count else { break }
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                position += 1
                return StringSpan(start: start, end: position - 1, hasEscapes: hasEscapes)
            }
            if byte == UInt8(ascii: "\\") {
                hasEscapes = true
                try scanEscape()
                continue
            }
            if byte < 0x20 {
                throw error("control character 0x\(String(byte, radix: 16)) in a string must be escaped")
            }
            if byte < 0x80 {
                position += 1
                continue
            }
            try scanMultiByteScalar(lead: byte)
        }
        throw error("unterminated string", at: start - 1)
    }

    /// The high bit of each byte of `word` (first byte lowest) that is a quote, a backslash, a control
    /// character or not ASCII; zero when all eight can be skipped.
    @inline(__always)
    package static func bytesNeedingALook(_ word: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highBits: UInt64 = 0x8080_8080_8080_8080
        let quote = word ^ (ones &* 0x22)
        let backslash = word ^ (ones &* 0x5C)
        // (x - 1) & ~x has a byte's high bit set where that byte of x is zero (x < 0x80); (w - 0x20) & ~w
        // where the byte of w is below 0x20.
        let zeroInQuote = (quote &- ones) & ~quote
        let zeroInBackslash = (backslash &- ones) & ~backslash
        let control = (word &- (ones &* 0x20)) & ~word
        return ((zeroInQuote | zeroInBackslash | control) | word) & highBits
    }

    private mutating func scanEscape() throws(JSONScanError) {
        let start = position
        position += 1
        guard let code = peek() else { throw error("unterminated escape", at: start) }
        position += 1
        switch code {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
            UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
            return
        case UInt8(ascii: "u"):
            let unit = try hexQuad(at: start)
            if unit >= 0xD800 && unit < 0xDC00 {
                // A high surrogate must be followed by an escaped low surrogate.
                guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                    throw error("unpaired surrogate \\u\(String(unit, radix: 16)) in a string", at: start, kind: .invalidUTF8)
                }
                position += 2
                let low = try hexQuad(at: start)
                guard low >= 0xDC00 && low < 0xE000 else {
                    throw error("unpaired surrogate \\u\(String(unit, radix: 16)) in a string", at: start, kind: .invalidUTF8)
                }
            } else if unit >= 0xDC00 && unit < 0xE000 {
                throw error("unpaired surrogate \\u\(String(unit, radix: 16)) in a string", at: start, kind: .invalidUTF8)
            }
        default:
            throw error("invalid escape '\\\(Character(Unicode.Scalar(code)))'", at: start)
        }
    }

    private mutating func hexQuad(at start: Int) throws(JSONScanError) -> UInt32 {
        guard position + 4 <= bytes.count else { throw error("truncated \\u escape", at: start) }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[position]
            let digit: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = c - UInt8(ascii: "A") + 10
            default: throw error("invalid \\u escape", at: start)
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// Validates one UTF-8 sequence of 2–4 bytes (Unicode 15, table 3-7).
    private mutating func scanMultiByteScalar(lead: UInt8) throws(JSONScanError) {
        let start = position
        let count = bytes.count
        func continuation(_ offset: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> Bool {
            start + offset < count && bytes[start + offset] >= low && bytes[start + offset] <= high
        }
        let valid: Bool
        let length: Int
        switch lead {
        case 0xC2...0xDF:
            length = 2
            valid = continuation(1)
        case 0xE0:
            length = 3
            valid = continuation(1, 0xA0, 0xBF) && continuation(2)
        case 0xE1...0xEC, 0xEE...0xEF:
            length = 3
            valid = continuation(1) && continuation(2)
        case 0xED:
            length = 3
            valid = continuation(1, 0x80, 0x9F) && continuation(2)
        case 0xF0:
            length = 4
            valid = continuation(1, 0x90, 0xBF) && continuation(2) && continuation(3)
        case 0xF1...0xF3:
            length = 4
            valid = continuation(1) && continuation(2) && continuation(3)
        case 0xF4:
            length = 4
            valid = continuation(1, 0x80, 0x8F) && continuation(2) && continuation(3)
        default:
            length = 1
            valid = false
        }
        guard valid else { throw error("invalid UTF-8", kind: .invalidUTF8) }
        position += length
    }

    // MARK: Objects

    /// Enters an object at the current position (after whitespace). Throws if the value is not an object.
    package mutating func beginObject() throws(JSONScanError) {
        skipWhitespace()
        guard peek() == UInt8(ascii: "{") else { throw unexpected("'{'") }
        position += 1
        firstMember = true
    }

    private var firstMember = true

    /// Advances to the next member of the object entered with ``beginObject()``; returns its name, with
    /// the scanner placed before the value, or `nil` after the closing brace.
    package mutating func nextMember() throws(JSONScanError) -> StringSpan? {
        skipWhitespace()
        if firstMember {
            firstMember = false
            if peek() == UInt8(ascii: "}") {
                position += 1
                return nil
            }
        } else {
            guard let byte = peek() else { throw unexpected("',' or '}'") }
            if byte == UInt8(ascii: "}") {
                position += 1
                return nil
            }
            guard byte == UInt8(ascii: ",") else { throw unexpected("',' or '}'") }
            position += 1
            skipWhitespace()
        }
        guard peek() == UInt8(ascii: "\"") else { throw unexpected("a member name in quotes") }
        let name = try scanString()
        whitespaceAtMemberName = whitespace
        skipWhitespace()
        guard peek() == UInt8(ascii: ":") else { throw unexpected("':'") }
        position += 1
        skipWhitespace()
        return name
    }

    /// Where the value of the first top-level member named `name` lies in the JSON object `bytes`; `nil`
    /// when it has none, or when the bytes stop being JSON before it.
    package static func valueOfMember(_ name: String, in bytes: UnsafeRawBufferPointer) -> Range<Int>? {
        var scanner = JSONScanner(bytes)
        do {
            try scanner.beginObject()
            while let member = try scanner.nextMember() {
                let start = scanner.position
                try scanner.skipValue(depth: 2, maxDepth: 64)
                if scanner.string(member, equals: name) { return start..<scanner.position }
            }
        } catch {
            // Not JSON from here on: no such member can be told.
        }
        return nil
    }

    /// Whether `span` (a string's contents) equals `name`; decodes escapes when the span has any.
    package func string(_ span: StringSpan, equals name: String) -> Bool {
        if span.hasEscapes { return decode(span) == name }
        if let equal = name.utf8.withContiguousStorageIfAvailable({ rawEquals(span, UnsafeRawBufferPointer($0)) }) {
            return equal
        }
        return name.utf8.elementsEqual(UnsafeRawBufferPointer(rebasing: bytes[span.start..<span.end]))
    }

    /// Whether `span` equals the ASCII `name` the code spells out (`"ack"`, `"data"`): asked of every
    /// member of every record, so it compares the bytes in place, without the `String` machinery.
    @inline(__always)
    package func string(_ span: StringSpan, is name: StaticString) -> Bool {
        let expected = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        if span.hasEscapes { return decode(span).utf8.elementsEqual(expected) }
        return rawEquals(span, expected)
    }

    /// Whether the bytes of `span` (taken as they are) equal `name`: length first, then byte by byte in
    /// place. Member names are short and most differ in length or in their first byte, so a call into
    /// `memcmp` would cost more than the comparison.
    @inline(__always)
    private func rawEquals(_ span: StringSpan, _ name: UnsafeRawBufferPointer) -> Bool {
        guard span.count == name.count else { return false }
        for i in 0..<name.count where bytes[span.start + i] != name[i] { return false }
        return true
    }

    /// The decoded text of a validated string span.
    package func decode(_ span: StringSpan) -> String {
        let raw = UnsafeRawBufferPointer(rebasing: bytes[span.start..<span.end])
        guard span.hasEscapes else { return String(decoding: raw, as: UTF8.self) }
        var scalars = String.UnicodeScalarView()
        var utf8: [UInt8] = []
        var i = 0
        func flush() {
            scalars.append(contentsOf: String(decoding: utf8, as: UTF8.self).unicodeScalars)
            utf8.removeAll(keepingCapacity: true)
        }
        func hex(_ at: Int) -> UInt32 { UInt32(String(decoding: raw[at..<at + 4], as: UTF8.self), radix: 16) ?? 0xFFFD }
        while i < raw.count {
            let c = raw[i]
            guard c == UInt8(ascii: "\\") else {
                utf8.append(c)
                i += 1
                continue
            }
            flush()
            let code = raw[i + 1]
            i += 2
            switch code {
            case UInt8(ascii: "b"): scalars.append("\u{08}")
            case UInt8(ascii: "f"): scalars.append("\u{0C}")
            case UInt8(ascii: "n"): scalars.append("\n")
            case UInt8(ascii: "r"): scalars.append("\r")
            case UInt8(ascii: "t"): scalars.append("\t")
            case UInt8(ascii: "u"):
                var unit = hex(i)
                i += 4
                if unit >= 0xD800 && unit < 0xDC00 {
                    let low = hex(i + 2)
                    i += 6
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                }
                scalars.append(Unicode.Scalar(unit) ?? "\u{FFFD}")
            default: scalars.append(Unicode.Scalar(code))
            }
        }
        flush()
        return String(scalars)
    }
}

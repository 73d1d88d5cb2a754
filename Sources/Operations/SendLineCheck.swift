import Core
import Glibc
import Intake

/// How `definite-agent send` checks an input line before it goes into a request of many lines: by the
/// agent's own rules for a row of `data`, so that the agent does not refuse the request for one line (and
/// a line cannot change the request it is wrapped in).
///
/// Most lines are plain — ASCII strings without escapes, numbers, literals, a few levels of nesting — and
/// a tight single pass (``isPlainRow(_:mergeKey:)``) proves them valid; anything else, and every line it
/// cannot vouch for, gets the agent's scanner and its verdict (``problem(_:mergeKey:)``).
enum SendLineCheck {
    /// Why the agent would refuse `line` as a row, or `nil`: anything but one JSON object, invalid UTF-8,
    /// nesting deeper than the Stream API's limit, a field or the row over its size limit, and — when the table
    /// merges on `mergeKey` — a missing or null key. The same rules, codes and order as the agent's.
    static func problem(_ line: UnsafeRawBufferPointer, mergeKey: String? = nil) -> IntakeRejection? {
        if line.count <= StreamAPILimits.maxFieldBytes {
            let plain =
                mergeKey.map { key in
                    key.utf8.withContiguousStorageIfAvailable { isPlainRow(line, mergeKey: UnsafeRawBufferPointer($0)) } ?? false
                }
                ?? isPlainRow(line, mergeKey: nil)
            if plain { return nil }
        }
        var scanner = JSONScanner(line)
        do throws(JSONScanError) {
            scanner.skipWhitespace()
            guard scanner.peek() == UInt8(ascii: "{") else {
                if scanner.isAtEnd { throw scanner.unexpected("a JSON object") }
                return IntakeRejection(.invalidRow, "each line must be a JSON object")
            }
            if mergeKey == nil, line.count <= StreamAPILimits.maxFieldBytes {
                // No field can be over the limit and no key is looked for: one pass over the object.
                try scanner.skipValue(depth: 1, maxDepth: StreamAPILimits.maxDepth)
            } else {
                let (start, whitespace) = (scanner.position, scanner.whitespace)
                if let problem = try memberProblem(&scanner, mergeKey: mergeKey) { return problem }
                do {
                    try IntakeLineParser.checkRowSize(scanner.position - start - (scanner.whitespace - whitespace), row: nil)
                } catch {
                    return error
                }
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
        var keySeen = false
        try scanner.beginObject()
        while let name = try scanner.nextMember() {
            if let mergeKey, scanner.string(name, equals: mergeKey) {
                if keySeen { return IntakeLineParser.repeatedKey(mergeKey, at: name.start - 1, row: nil) }
                keySeen = true
                keyPresent = scanner.peek() != UInt8(ascii: "n")
            }
            let valueStart = scanner.position
            let whitespaceBefore = scanner.whitespace
            try scanner.skipValue(depth: 2, maxDepth: StreamAPILimits.maxDepth)
            let bytes = scanner.position - valueStart - (scanner.whitespace - whitespaceBefore)
            if bytes > StreamAPILimits.maxFieldBytes {
                return IntakeLineParser.fieldTooLarge(scanner.decode(name), bytes: bytes, row: nil)
            }
        }
        guard keyPresent else {
            return IntakeRejection(.missingPrimaryKey, "primary key \"\(mergeKey ?? "")\" is missing or null; merge needs it in every row")
        }
        return nil
    }

    /// Whether `line` is certainly a row the agent takes: one JSON object, then only whitespace, whose
    /// strings are ASCII without escapes or control characters, at most `StreamAPILimits.maxDepth` deep,
    /// with a non-null top-level `mergeKey` member when one is given. `false` means "not certain", not
    /// "invalid". The caller keeps lines longer than the field limit from it (it does not measure fields).
    static func isPlainRow(_ line: UnsafeRawBufferPointer, mergeKey: UnsafeRawBufferPointer?) -> Bool {
        guard let base = line.baseAddress else { return false }
        return PlainScan(bytes: base.assumingMemoryBound(to: UInt8.self), count: line.count).row(mergeKey: mergeKey)
    }

    /// The single pass of ``isPlainRow(_:mergeKey:)``: a loop over the bytes with the open containers as
    /// bits (bit `d` set: the container at depth `d` is an array), no recursion, no allocation. The
    /// position lives in a local so that it stays in a register.
    private struct PlainScan {
        let bytes: UnsafePointer<UInt8>
        let count: Int

        func row(mergeKey: UnsafeRawBufferPointer?) -> Bool {
            let bytes = bytes
            let count = count
            var i = 0

            @inline(__always) func isWhitespace(_ byte: UInt8) -> Bool {
                byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
            }
            @inline(__always) func skipWhitespace(_ i: inout Int) {
                while i < count, isWhitespace(bytes[i]) { i &+= 1 }
            }
            @inline(__always) func isDigit(_ i: Int) -> Bool { i < count && bytes[i] &- UInt8(ascii: "0") < 10 }
            /// A string from its opening quote: ASCII, no escape, no control character.
            @inline(__always) func string(_ i: inout Int) -> Bool {
                i &+= 1
                while i &+ 8 <= count {
                    let word = UInt64(littleEndian: UnsafeRawPointer(bytes + i).loadUnaligned(as: UInt64.self))
                    let flagged = JSONScanner.bytesNeedingALook(word)
                    if flagged == 0 {
                        i &+= 8
                        continue
                    }
                    i &+= flagged.trailingZeroBitCount &>> 3
                    guard bytes[i] == UInt8(ascii: "\"") else { return false }
                    i &+= 1
                    return true
                }
                while i < count {
                    let byte = bytes[i]
                    i &+= 1
                    if byte == UInt8(ascii: "\"") { return true }
                    if byte < 0x20 || byte >= 0x80 || byte == UInt8(ascii: "\\") { return false }
                }
                return false
            }
            @inline(__always) func literal(_ i: inout Int, _ text: StaticString) -> Bool {
                let n = text.utf8CodeUnitCount
                guard i &+ n <= count, memcmp(bytes + i, text.utf8Start, n) == 0 else { return false }
                i &+= n
                return true
            }
            /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
            @inline(__always) func number(_ i: inout Int) -> Bool {
                if bytes[i] == UInt8(ascii: "-") { i &+= 1 }
                guard isDigit(i) else { return false }
                if bytes[i] == UInt8(ascii: "0") {
                    i &+= 1
                    if isDigit(i) { return false }
                } else {
                    while isDigit(i) { i &+= 1 }
                }
                if i < count, bytes[i] == UInt8(ascii: ".") {
                    i &+= 1
                    guard isDigit(i) else { return false }
                    while isDigit(i) { i &+= 1 }
                }
                if i < count, bytes[i] | 0x20 == UInt8(ascii: "e") {
                    i &+= 1
                    if i < count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i &+= 1 }
                    guard isDigit(i) else { return false }
                    while isDigit(i) { i &+= 1 }
                }
                return true
            }

            skipWhitespace(&i)
            guard i < count, bytes[i] == UInt8(ascii: "{") else { return false }
            i &+= 1
            var depth = 1
            var arrays: UInt32 = 0
            var keyFound = mergeKey == nil
            var keySeen = false
            var opened = true  // just after `{` or `[`: the container may close at once
            while true {
                skipWhitespace(&i)
                guard i < count else { return false }
                let inArray = arrays & (1 &<< depth) != 0
                if opened, bytes[i] == (inArray ? UInt8(ascii: "]") : UInt8(ascii: "}")) {
                    i &+= 1
                    depth &-= 1
                } else {
                    if !inArray {
                        guard bytes[i] == UInt8(ascii: "\"") else { return false }
                        let nameStart = i &+ 1
                        guard string(&i) else { return false }
                        let nameEnd = i &- 1
                        skipWhitespace(&i)
                        guard i < count, bytes[i] == UInt8(ascii: ":") else { return false }
                        i &+= 1
                        skipWhitespace(&i)
                        if depth == 1, let key = mergeKey, nameEnd &- nameStart == key.count,
                            memcmp(bytes + nameStart, key.baseAddress!, key.count) == 0
                        {
                            guard !keySeen else { return false }  // the key twice: the scanner says why
                            keySeen = true
                            keyFound = i < count && bytes[i] != UInt8(ascii: "n")
                        }
                    }
                    guard i < count else { return false }
                    switch bytes[i] {
                    case UInt8(ascii: "\""): guard string(&i) else { return false }
                    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): guard number(&i) else { return false }
                    case UInt8(ascii: "{"), UInt8(ascii: "["):
                        depth &+= 1
                        guard depth <= StreamAPILimits.maxDepth else { return false }
                        if bytes[i] == UInt8(ascii: "[") { arrays |= 1 &<< depth } else { arrays &= ~(1 &<< depth) }
                        i &+= 1
                        opened = true
                        continue
                    case UInt8(ascii: "t"): guard literal(&i, "true") else { return false }
                    case UInt8(ascii: "f"): guard literal(&i, "false") else { return false }
                    case UInt8(ascii: "n"): guard literal(&i, "null") else { return false }
                    default: return false
                    }
                }
                // After a value: a comma, or the close of its container (and of those it ends).
                opened = false
                while depth > 0 {
                    skipWhitespace(&i)
                    guard i < count else { return false }
                    let byte = bytes[i]
                    i &+= 1
                    if byte == UInt8(ascii: ",") { break }
                    guard byte == (arrays & (1 &<< depth) != 0 ? UInt8(ascii: "]") : UInt8(ascii: "}")) else { return false }
                    depth &-= 1
                }
                if depth == 0 {
                    skipWhitespace(&i)
                    return i == count && keyFound
                }
            }
        }
    }
}

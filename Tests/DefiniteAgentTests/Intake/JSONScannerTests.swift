import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// The string scanner skips plain ASCII eight bytes at a time; these tests put each byte that needs a
/// closer look at every offset (inside a word, on a word's edges, in the tail shorter than a word) and
/// check it is judged exactly as a byte-at-a-time scan would.
@Suite("JSON scanner")
struct JSONScannerTests {
    /// Scans `"` + `contents` + the rest as one string, with `trailing` bytes after it in the buffer.
    func scan(_ contents: [UInt8], trailing: Int = 9) -> Result<JSONScanner.StringSpan, JSONScanError> {
        let text = [UInt8(ascii: "\"")] + contents + [UInt8](repeating: UInt8(ascii: "z"), count: trailing)
        return text.withUnsafeBytes { raw in
            var scanner = JSONScanner(raw)
            return Result { () throws(JSONScanError) in try scanner.scanString() }
        }
    }

    static let offsets = Array(0..<20)

    @Test(arguments: offsets)
    func theClosingQuoteEndsTheStringWhereverItFalls(offset: Int) throws {
        let pad = [UInt8](repeating: UInt8(ascii: "a"), count: offset)
        for trailing in [0, 3, 9] {
            let span = try scan(pad + [UInt8(ascii: "\"")], trailing: trailing).get()
            #expect(span.start == 1 && span.end == 1 + offset && !span.hasEscapes)
        }
    }

    @Test(arguments: offsets)
    func bytesNextToTheSpecialOnesAreAccepted(offset: Int) throws {
        let pad = [UInt8](repeating: UInt8(ascii: "a"), count: offset)
        // Neighbours of the quote (0x22), the backslash (0x5C), the control range (< 0x20) and ASCII's end.
        for byte: UInt8 in [0x20, 0x21, 0x23, 0x5B, 0x5D, 0x7E, 0x7F] {
            let span = try scan(pad + [byte] + pad + [UInt8(ascii: "\"")]).get()
            #expect(span.end == 2 + 2 * offset, "byte 0x\(String(byte, radix: 16)) at \(offset)")
        }
    }

    @Test(arguments: offsets)
    func escapesAndMultiByteScalarsAreValidatedWhereverTheyFall(offset: Int) throws {
        let pad = [UInt8](repeating: UInt8(ascii: "a"), count: offset)
        let escaped = try scan(pad + Array(#"\"\n\u00e9"#.utf8) + pad + [UInt8(ascii: "\"")]).get()
        #expect(escaped.hasEscapes && escaped.end == 1 + 2 * offset + 10)
        let accented = try scan(pad + Array("é✓𝄞".utf8) + [UInt8(ascii: "\"")]).get()
        #expect(!accented.hasEscapes && accented.end == 1 + offset + 9)
        #expect(throws: JSONScanError.self) { try scan(pad + Array(#"\x"#.utf8) + [UInt8(ascii: "\"")]).get() }
    }

    @Test(arguments: offsets)
    func forbiddenBytesAreRefusedAtTheirOffset(offset: Int) {
        let pad = [UInt8](repeating: UInt8(ascii: "a"), count: offset)
        let cases: [(bytes: [UInt8], kind: JSONScanError.Kind)] = [
            ([0x00], .syntax), ([0x0A], .syntax), ([0x1F], .syntax),
            ([0xFF], .invalidUTF8), ([0x80], .invalidUTF8), ([0xC3, 0x28], .invalidUTF8), ([0xED, 0xA0, 0x80], .invalidUTF8),
        ]
        for (bytes, kind) in cases {
            guard case .failure(let error) = scan(pad + bytes + pad + [UInt8(ascii: "\"")]) else {
                Issue.record("accepted \(bytes) at offset \(offset)")
                continue
            }
            #expect(error.kind == kind && error.offset == 1 + offset, "\(bytes) at \(offset): \(error)")
        }
    }

    @Test(arguments: offsets)
    func aStringWithoutItsClosingQuoteIsUnterminated(offset: Int) {
        let pad = [UInt8](repeating: UInt8(ascii: "a"), count: offset)
        guard case .failure(let error) = scan(pad, trailing: 0) else {
            Issue.record("accepted an unterminated string of \(offset) bytes")
            return
        }
        #expect(error.reason == "unterminated string" && error.offset == 0)
    }

    @Test func reservedNamesAreRecognisedByBytesAndThroughEscapes() throws {
        let text = Array(#"{"ack":1,"acx":2,"\u0061ck":3,"ac":4,"acks":5}"#.utf8)
        let names = text.withUnsafeBytes { raw -> [Bool] in
            var scanner = JSONScanner(raw)
            var isAck: [Bool] = []
            try? scanner.beginObject()
            while let name = try? scanner.nextMember() {
                isAck.append(scanner.string(name, is: "ack"))
                _ = try? scanner.skipValue(depth: 1, maxDepth: 10)
            }
            return isAck
        }
        #expect(names == [true, false, true, false, false])
    }

    /// The outline skip (used to find an ack after a refusal) ends each value where the full scan does,
    /// at any depth, without recursion.
    @Test(arguments: [
        (#"{"a":[1,{"b":"]}"}],"c":"x"} ,"#, 28),
        (#"[[["\"]"]]] "#, 11),
        (#""s\"}" ,"#, 6),
        (#"-1.5e3,"#, 6),
        (#"true}"#, 4),
    ])
    func outlineSkipEndsWhereTheValueEnds(text: String, end: Int) throws {
        let bytes = Array(text.utf8)
        let position = try bytes.withUnsafeBytes { raw in
            var scanner = JSONScanner(raw)
            try scanner.skipValueOutline()
            return scanner.position
        }
        #expect(position == end)
    }

    @Test func outlineSkipTakesAnyDepth() throws {
        let depth = 200_000
        let bytes = Array((String(repeating: "[", count: depth) + String(repeating: "]", count: depth)).utf8)
        let position = try bytes.withUnsafeBytes { raw in
            var scanner = JSONScanner(raw)
            try scanner.skipValueOutline()
            return scanner.position
        }
        #expect(position == bytes.count)
    }
}

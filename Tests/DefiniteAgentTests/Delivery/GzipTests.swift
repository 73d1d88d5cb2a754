import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// Request bodies are compressed with libdeflate and must be gzip that zlib (and so the API) reads back.
@Suite("Gzip")
struct GzipTests {
    /// Rows like a batch's: compressible, with a prefix and a suffix around them as a JSON body has.
    static let rows = Array((0..<5_000).map { #"{"n":\#($0),"host":"web-01","msg":"request \#($0) served"}"# }.joined(separator: ",").utf8)
    static let prefix = Array(#"{"data":["#.utf8)
    static let suffix = Array(#"],"config":{"table":"bronze.events"}}"#.utf8)

    func compress(_ parts: [[UInt8]], level: Int) throws -> [UInt8] {
        var output: [UInt8] = []
        func go(_ index: Int, _ pointers: [UnsafeRawBufferPointer]) throws {
            guard index < parts.count else { return try Gzip.compress(parts: pointers, level: level, into: &output) }
            try parts[index].withUnsafeBytes { try go(index + 1, pointers + [$0]) }
        }
        try go(0, [])
        return output
    }

    @Test(arguments: [1, 3, 6, 9])
    func partsAreCompressedAsOneMemberThatZlibReadsBack(level: Int) throws {
        let body = try compress([Self.prefix, Self.rows, Self.suffix], level: level)
        #expect(Array(body.prefix(2)) == [0x1f, 0x8b], "a gzip member")
        #expect(try Gzip.decompress(body) == Self.prefix + Self.rows + Self.suffix)
        #expect(body.count * 10 < Self.rows.count, "\(body.count) bytes for \(Self.rows.count)")
    }

    @Test func oneBodyIsCompressedWhereItLiesAndEmptyPartsAreSkipped() throws {
        let body = try compress([[], Self.rows, []], level: 6)
        #expect(try Gzip.decompress(body) == Self.rows)
        #expect(try Gzip.decompress(try compress([[], []], level: 6)) == [])
    }

    @Test func incompressibleInputNeedsMoreThanAQuarterAndStillRoundTrips() throws {
        var generator = SystemRandomNumberGenerator()
        let noise = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let body = try compress([noise], level: 6)
        #expect(body.count > noise.count / 4)
        #expect(try Gzip.decompress(body) == noise)
    }

    @Test func higherLevelsSendFewerBytes() throws {
        #expect(try compress([Self.rows], level: 6).count < compress([Self.rows], level: 1).count)
    }

    /// RFC 1952: gzip data may be several members one after the other (`cat a.gz b.gz`). Only the first
    /// was inflated, and the rows of the others were dropped without a word; bytes after a member that
    /// start no other one were ignored, and so was a zlib stream's wrapper.
    @Test func everyMemberIsInflatedAndAnythingElseAfterOneIsRefused() throws {
        let first = try Gzip.compress(Array(#"{"id":1}\#n"#.utf8), level: 6)
        let second = try Gzip.compress(Array(#"{"id":2}\#n"#.utf8), level: 1)
        #expect(try Gzip.decompress(first + second + first) == Array(#"{"id":1}\#n{"id":2}\#n{"id":1}\#n"#.utf8))
        func failure(_ input: [UInt8], limit: Int = .max) -> (Gzip.Error.Kind, Int32)? {
            do {
                _ = try Gzip.decompress(input, limit: limit)
                return nil
            } catch {
                return (error as? Gzip.Error).map { ($0.kind, $0.code) }
            }
        }
        #expect(failure(first + second, limit: 10)?.0 == .overLimit, "the limit holds across members")
        #expect(failure(first + Array("GARBAGE\n".utf8)).map { [$0.0 == .trailingData, $0.1 == 8] } == [true, true])
        #expect(failure(first + [0x1f]).map { [$0.0 == .trailingData, $0.1 == 1] } == [true, true])
        #expect(failure(first + Array(second.dropLast(3)))?.0 == .invalidData, "a member cut short")
        let zlib: [UInt8] = [0x78, 0x9c, 0xab, 0xae, 0x05, 0x00, 0x01, 0x75, 0x00, 0xf9]  // "{}" in a zlib wrapper
        #expect(failure(zlib)?.0 == .invalidData)
    }

    @Test func decompressingPastTheLimitIsABufferError() throws {
        let body = try Gzip.compress(Self.rows, level: 6)
        #expect(throws: Gzip.Error.self) { try Gzip.decompress(body, limit: 1_000) }
        #expect(try Gzip.decompress(body, limit: Self.rows.count) == Self.rows)
    }
}

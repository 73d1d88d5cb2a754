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

    @Test func decompressingPastTheLimitIsABufferError() throws {
        let body = try Gzip.compress(Self.rows, level: 6)
        #expect(throws: Gzip.Error.self) { try Gzip.decompress(body, limit: 1_000) }
        #expect(try Gzip.decompress(body, limit: Self.rows.count) == Self.rows)
    }
}

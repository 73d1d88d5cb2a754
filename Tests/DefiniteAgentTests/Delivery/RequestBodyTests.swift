import Testing

@testable import Core
@testable import Delivery
@testable import Spool

/// Request bodies from records read with either separator: the body is the same, and the records' buffer is
/// used as it is when its separator is the one the body wants.
@Suite("Request bodies")
struct RequestBodyTests {
    static let rows = [#"{"a":1}"#, #"{"b":"x,y\n"}"#, #"{"c":[1,2]}"#]

    static func records(separator: UInt8) -> SpooledRecords {
        var records = SpooledRecords(separator: separator)
        for (seq, row) in rows.enumerated() {
            Array(row.utf8).withUnsafeBytes { records.append(seq: Int64(seq), $0) }
        }
        return records
    }

    static func body(_ records: SpooledRecords, _ format: AgentConfiguration.BodyFormat) throws -> String {
        var output: [UInt8] = []
        let body = try RequestBody.make(
            records: records, indexes: Array(0..<records.count), target: SpoolTarget(table: "bronze.t", mode: .append),
            batchID: "b", host: "h", format: format, compression: .none, gzipLevel: 6, reusing: &output)
        return String(decoding: body.bytes, as: UTF8.self)
    }

    @Test(arguments: [AgentConfiguration.BodyFormat.json, .ndjson])
    func eitherSeparatorMakesTheSameBody(format: AgentConfiguration.BodyFormat) throws {
        let comma = try Self.body(Self.records(separator: UInt8(ascii: ",")), format)
        let newline = try Self.body(Self.records(separator: UInt8(ascii: "\n")), format)
        #expect(comma == newline)
        switch format {
        case .json: #expect(comma.hasPrefix(#"{"data":[{"a":1},{"b":"x,y\n"},{"c":[1,2]}],"config":"#))
        case .ndjson: #expect(comma == Self.rows.joined(separator: "\n") + "\n")
        }
    }

    @Test func theBufferIsTheBodyWhenItsSeparatorIsTheBodys() {
        let newline = Self.records(separator: UInt8(ascii: "\n"))
        #expect(newline.newlineSeparated == newline.bytes)
        #expect(newline.commaSeparated == Array((Self.rows.joined(separator: ",") + ",").utf8))
        let comma = Self.records(separator: UInt8(ascii: ","))
        #expect(comma.commaSeparated == comma.bytes)
        #expect(comma.newlineSeparated == Array((Self.rows.joined(separator: "\n") + "\n").utf8))
        // A subset keeps the separator.
        #expect(newline.subset([2, 0]).bytes == Array((Self.rows[2] + "\n" + Self.rows[0] + "\n").utf8))
    }

    /// The rows keep most of a small `[batch] max_bytes`: the tags' share is at most an eighth of it (it was
    /// 64 KiB whatever `max_bytes` said, so below ~65 KiB every batch held one row).
    @Test func aSmallMaxBytesLeavesTheRowsMostOfIt() {
        var configuration = AgentConfiguration()
        configuration.batch.maxBytes = .kibibytes(16)
        let small = DeliveryMachine.Settings(configuration)
        #expect(small.maxTagBytes == 2048 && small.maxBytes == 16384 - RequestBody.envelopeAllowance - 2048)
        configuration.batch.maxBytes = .mebibytes(4)
        let standard = DeliveryMachine.Settings(configuration)
        #expect(standard.maxTagBytes == 64 << 10 && standard.maxBytes == (4 << 20) - RequestBody.envelopeAllowance - (64 << 10))
        configuration.batch.format = .ndjson
        #expect(DeliveryMachine.Settings(configuration).maxTagBytes == 4 << 10)
    }
}

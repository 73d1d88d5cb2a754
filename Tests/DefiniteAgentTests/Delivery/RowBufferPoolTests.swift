import Foundation
import Logging
import Testing

@testable import Core
@testable import Delivery
@testable import Intake
@testable import Spool

/// Buffers of rows sent are read into again while batches keep coming (``RowBufferPool``), without ever
/// sharing bytes with something that still holds them.
@Suite("Row buffer pool")
struct RowBufferPoolTests {
    func buffer(capacity: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(capacity)
        bytes.append(contentsOf: [1, 2, 3])
        return bytes
    }

    func address(_ bytes: [UInt8]) -> UnsafeRawPointer? {
        bytes.withUnsafeBytes { $0.baseAddress }
    }

    @Test func keepsAtMostItsLimitAndNothingTooLargeOrEmpty() {
        let pool = RowBufferPool(limit: 2)
        #expect(pool.take().capacity == 0, "an empty pool gives an empty buffer")
        pool.recycle([], maxCapacity: 1 << 20)
        pool.recycle(buffer(capacity: 2 << 20), maxCapacity: 1 << 20)
        #expect(pool.count == 0, "neither a buffer without storage nor one larger than a batch needs is kept")
        for _ in 0..<3 { pool.recycle(buffer(capacity: 4096), maxCapacity: 1 << 20) }
        #expect(pool.count == 2)
        #expect(pool.take().capacity >= 4096)
        #expect(pool.count == 1)
        pool.drain()
        #expect(pool.count == 0)
        #expect(pool.take().capacity == 0)
    }

    func spoolWithRecords(_ count: Int) async throws -> (path: String, targetID: Int64) {
        let spool = try TestSpool("row-buffer-pool")
        defer { spool.shutDown() }
        let (path, writer) = (spool.path, spool.writer)
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        for i in 0..<count { _ = parser.parse(line: Array(#"{"i":\#(i)}"#.utf8), into: &batch) }
        try await writer.spoolAndWait(batch)
        return (path, try #require(try SpoolReader(path: path).targets().first).id)
    }

    @Test func aReadWritesIntoAKeptBufferInPlace() async throws {
        let (path, targetID) = try await spoolWithRecords(100)
        let reader = try SpoolReader(path: path)
        let pool = RowBufferPool(limit: 1)
        var (sent, _) = try reader.read(targetID: targetID, from: 0, end: 100, maxRows: .max, maxBytes: 64 << 10, reusing: pool.take())
        let firstAddress = address(sent.bytes)
        pool.recycle(sent.releaseBytes(), maxCapacity: 128 << 10)
        let (second, _) = try reader.read(targetID: targetID, from: 50, end: 100, maxRows: .max, maxBytes: 64 << 10, reusing: pool.take())
        #expect(address(second.bytes) == firstAddress, "the second batch is read into the first one's pages")
        #expect(second.count == 50 && second.record(0).elementsEqual(#"{"i":50}"#.utf8))
        #expect(!sent.holdsBytes && sent.count == 100, "the chain that let the bytes go keeps its rows' seqs")
    }

    @Test func aBufferStillHeldElsewhereIsNeverWrittenOver() async throws {
        let (path, targetID) = try await spoolWithRecords(10)
        let reader = try SpoolReader(path: path)
        let pool = RowBufferPool(limit: 1)
        let (first, _) = try reader.read(targetID: targetID, from: 0, end: 10, maxRows: .max, maxBytes: 64 << 10, separator: 10)
        // A request body still holds the rows (an uncompressed NDJSON body is their buffer).
        let body = first.bytes
        var chain = first
        pool.recycle(chain.releaseBytes(), maxCapacity: 128 << 10)
        let (second, _) = try reader.read(targetID: targetID, from: 5, end: 10, maxRows: .max, maxBytes: 64 << 10, reusing: pool.take())
        #expect(address(second.bytes) != address(body))
        #expect(String(decoding: body, as: UTF8.self) == (0..<10).map { #"{"i":\#($0)}"# + "\n" }.joined())
    }
}

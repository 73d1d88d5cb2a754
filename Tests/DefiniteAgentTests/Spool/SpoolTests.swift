import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import DefiniteAgent

@Suite("Spool")
struct SpoolTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "spool-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func batch(_ lines: [String], config: AgentConfiguration) -> IntakeBatch {
        var parser = IntakeLineParser(configuration: config)
        var batch = IntakeBatch()
        for line in lines { _ = parser.parse(line: Array(line.utf8), into: &batch) }
        return batch
    }

    @Test func groupCommitAppendsOneSegmentPerTargetWithConsecutiveSequenceNumbers() async throws {
        let path = directory + "/spool.db"
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let first = batch([#"{"a":1}"#, #"{"a":2}"#, #"{"config":{"table":"bronze.u"},"data":[{"b":1}]}"#], config: config)
        let second = batch([#"{"a":3}"#], config: config)
        let p1 = loop.makePromise(of: Void.self)
        let p2 = loop.makePromise(of: Void.self)
        writer.submit(first, promise: p1)
        writer.submit(second, promise: p2)
        try await p1.futureResult.get()
        try await p2.futureResult.get()
        writer.shutdown()

        let status = try SpoolStatus.read(path: path)
        #expect(status.pending == 4)
        #expect(status.targets.map(\.table) == ["bronze.events", "bronze.u"])
        #expect(status.targets[0].pending == 3)
        #expect(status.targets[0].pendingBytes == 24)

        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared("SELECT first_seq, record_count, records FROM segments WHERE target_id = 1 ORDER BY first_seq")
        var segments: [(Int, Int, String)] = []
        while try rows.step() {
            segments.append((rows.int(0), rows.int(1), String(decoding: rows.blob(2), as: UTF8.self)))
        }
        rows.reset()
        // Both batches may share one commit or not; either way the log is gap-free and in order.
        let all = segments.map(\.2).joined()
        #expect(all == "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n")
        var next = 0
        for segment in segments {
            #expect(segment.0 == next)
            next += segment.1
        }
    }

    @Test func aLargeCommitIsSplitIntoBoundedSegmentsInOrder() async throws {
        let path = directory + "/spool.db"
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        let writer = try SpoolWriter(path: path, durability: .normal, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        let pad = String(repeating: "p", count: 1000)
        let lines = (0..<3000).map { "{\"i\":\($0),\"pad\":\"\(pad)\"}" }
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        writer.submit(batch(lines, config: config), promise: promise)
        try await promise.futureResult.get()
        writer.shutdown()

        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared("SELECT first_seq, record_count, byte_count, records FROM segments ORDER BY first_seq")
        var next = 0
        var decoded: [String] = []
        var segments = 0
        while try rows.step() {
            segments += 1
            #expect(rows.int(0) == next)
            #expect(rows.int(2) <= SpoolWriter.maxSegmentBytes + 1100)
            let text = String(decoding: rows.blob(3), as: UTF8.self)
            let records = text.split(separator: "\n").map(String.init)
            #expect(records.count == rows.int(1))
            decoded += records
            next += rows.int(1)
        }
        rows.reset()
        #expect(segments >= 3)
        #expect(decoded == lines)
    }

    @Test func deliveredSegmentsAreRemovedThroughTheIndexNotByScanningTheBacklog() throws {
        let path = directory + "/spool.db"
        let writer = try SpoolWriter(path: path, durability: .normal, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        writer.shutdown()
        let db = try SpoolDatabase.openForMaintenance(path: path)
        let plan = try db.prepared("EXPLAIN QUERY PLAN " + DeliveryLedger.dropDeliveredSegments)
        var details: [String] = []
        while try plan.step() { details.append(plan.string(3) ?? "") }
        plan.reset()
        // A search bounded on first_seq, not one over every segment of the target.
        #expect(details == ["SEARCH segments USING INDEX segments_by_target (target_id=? AND first_seq<?)"])
    }

    @Test func aFileThatIsNotSQLiteIsRefusedAndLeftUntouched() throws {
        let path = directory + "/spool.db"
        let contents = Data("this is my diary, not a database\n".utf8)
        try contents.write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        } throws: { ($0 as? SpoolError)?.code == .notASpool }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == contents)
    }

    @Test func aForeignSQLiteDatabaseIsRefused() throws {
        let path = directory + "/other.db"
        let other = try SQLiteConnection(path: path, mode: .readWrite)
        try other.execute("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me')")
        #expect {
            _ = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        } throws: { ($0 as? SpoolError)?.code == .notASpool }
        #expect(try other.scalar("SELECT count(*) FROM notes") == 1)
    }

    @Test func aSpoolFromANewerVersionIsRefused() throws {
        let path = directory + "/spool.db"
        do {
            let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
            writer.start()
            writer.shutdown()
        }
        let db = try SQLiteConnection(path: path, mode: .readWrite)
        try db.execute("PRAGMA user_version = \(SpoolSchema.currentVersion + 1)")
        #expect {
            _ = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        } throws: { error in
            guard let error = error as? SpoolError else { return false }
            return error.code == .newerSchema && error.message.contains("newer")
        }
        #expect(throws: SpoolError.self) { try SpoolStatus.read(path: path) }
    }

    @Test func capacityRefusesWhatWouldPassTheLimit() {
        let capacity = SpoolCapacity(limit: 100, used: 60)
        #expect(capacity.reserve(40))
        #expect(!capacity.reserve(1))
        capacity.release(50)
        #expect(capacity.reserve(50))
        #expect(capacity.usedBytes == 100)
    }
}

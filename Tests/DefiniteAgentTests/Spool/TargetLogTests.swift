import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// What a commit writes, and a target's position and bytes between settlements (``TargetLog``).
@Suite("Target log")
struct TargetLogTests {
    let directory: String
    let path: String

    init() throws {
        directory = try makeTemporaryDirectory("target-log-tests")
        path = directory + "/spool.db"
    }

    func batch(_ lines: [String], table: String = "bronze.events") -> SpoolBatch {
        var config = AgentConfiguration()
        config.intake.defaultTable = table
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        for line in lines { _ = parser.parse(line: Array(line.utf8), into: &batch) }
        return batch
    }

    func commit(_ batch: SpoolBatch, to writer: SpoolWriter) async throws {
        try await writer.spoolAndWait(batch)
    }

    func fileSize(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    func targetRow(_ db: SQLiteConnection) throws -> (nextSeq: Int64, pendingBytes: Int64) {
        let row = try db.prepared("SELECT next_seq, pending_bytes FROM targets")
        defer { row.reset() }
        _ = try row.step()
        return (row.int64(0), row.int64(1))
    }

    @Test func aCommitOfOneSmallRecordWritesOnePageToTheWAL() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        try await commit(batch([#"{"warm":"up"}"#]), to: writer)
        let pageSize = Int(try SpoolDatabase.openForReading(path: path).scalar("PRAGMA page_size"))
        #expect(pageSize == 4096)
        let before = fileSize(path + "-wal")
        let commits = 100
        for i in 0..<commits {
            try await commit(batch([#"{"event":"page_view","user":\#(i),"path":"/home"}"#]), to: writer)
        }
        // One frame (header + page) per commit, and a few more: leaf pages filling up and splitting (a 4 KiB
        // leaf holds ~60 such records), and the target's row once a second. Before: 3 pages per commit (the
        // table's page, its index's and the target's row).
        let frames = Double(fileSize(path + "-wal") - before) / Double(pageSize + 24)
        #expect(frames >= Double(commits))
        #expect(frames <= Double(commits) * 1.1, "\(frames) WAL frames for \(commits) commits of one record")
    }

    @Test func smallAppendsKeepTheirRecordsInTheRowLargeOnesApartAndRemovalTakesBoth() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        let small = batch([#"{"i":0}"#])
        let large = batch((1..<100).map { #"{"i":\#($0),"pad":"\#(String(repeating: "x", count: 20))"}"# })
        #expect(small.totalBytes <= SegmentLog.maxInlineBytes && large.totalBytes > SegmentLog.maxInlineBytes)
        try await commit(small, to: writer)
        try await commit(large, to: writer)
        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared("SELECT first_seq, records IS NOT NULL, records_id IS NOT NULL FROM segments ORDER BY first_seq")
        var kept: [(Int, Bool, Bool)] = []
        while try rows.step() { kept.append((rows.int(0), rows.int(1) == 1, rows.int(2) == 1)) }
        rows.reset()
        #expect(kept.map(\.0) == [0, 1])
        #expect(kept[0].1 && !kept[0].2, "the small append's records are in its row")
        #expect(!kept[1].1 && kept[1].2, "the large append's records are in segment_records")
        #expect(try db.scalar("SELECT count(*) FROM segment_records") == 1)

        // Both read back the same way, in order.
        let reader = try SpoolReader(path: path)
        let (records, _) = try reader.read(targetID: 1, from: 0, end: 100, maxRows: .max, maxBytes: .max)
        #expect(records.seqs == Array(0..<100))
        #expect(records.count == 100)

        // Delivering them removes the kept records too (the trigger), not only the segments.
        var change = DeliveryLedger.Change(targetID: 1)
        change.delivered = Array(0..<100)
        try DeliveryLedger(writer: writer).apply(change, records: records)
        #expect(try db.scalar("SELECT count(*) FROM segments") == 0)
        #expect(try db.scalar("SELECT count(*) FROM segment_records") == 0)
    }

    @Test func positionsAndBytesAreRightBetweenSettlementsAndAfterDeliveryRemovesSegments() async throws {
        let writer = try SpoolWriter(
            path: path, durability: .full, maxBytes: 1 << 30, settleInterval: .seconds(3600), logger: Logger(label: "test"))
        writer.start()
        let first = batch((0..<10).map { #"{"i":\#($0)}"# })
        let second = batch((10..<25).map { #"{"i":\#($0)}"# })
        // The first append settles the target's row at once; the second, within the interval, does not.
        try await commit(first, to: writer)
        try await commit(second, to: writer)
        let db = try SpoolDatabase.openForReading(path: path)
        let row = try targetRow(db)
        #expect(row.nextSeq == 10 && Int(row.pendingBytes) == first.totalBytes)
        // What everyone reads is the row with the segments after it.
        let status = try SpoolStatus.read(path: path)
        #expect(status.pending == 25 && status.pendingBytes == first.totalBytes + second.totalBytes)
        let reader = try SpoolReader(path: path)
        let target = try #require(try reader.targets().first)
        #expect(target.nextSeq == 25 && target.deliveredSeq == 0)
        #expect(try SpoolWriter.storedBytes(db) == first.totalBytes + second.totalBytes)

        // Delivery removes both segments: only the settled one's bytes come off the row.
        let (records, _) = try reader.read(targetID: target.id, from: 0, end: 25, maxRows: .max, maxBytes: .max)
        var change = DeliveryLedger.Change(targetID: target.id)
        change.delivered = Array(0..<25)
        try DeliveryLedger(writer: writer).apply(change, records: records)
        #expect(try targetRow(db).pendingBytes == 0)
        let drained = try SpoolStatus.read(path: path)
        #expect(drained.pending == 0 && drained.pendingBytes == 0)
        #expect(try db.scalar("SELECT count(*) FROM segments") == 0)

        // With no segment left, the log still ends where it ended: the next record is seq 25.
        try await commit(batch([#"{"i":25}"#]), to: writer)
        #expect(try reader.targets().first?.nextSeq == 26)
        let (next, _) = try reader.read(targetID: target.id, from: 0, end: 26, maxRows: .max, maxBytes: .max)
        #expect(next.seqs == [25])

        // Stopping settles every target: the row alone is right again.
        writer.shutdown()
        let settled = try targetRow(try SpoolDatabase.openForReading(path: path))
        let stored = try SpoolStatus.read(path: path).pendingBytes
        #expect(settled.nextSeq == 26 && Int(settled.pendingBytes) == stored)
    }

    /// Delivery learns of new rows from what each commit reports: their seqs and their stored bytes, the
    /// same bytes a read of those rows gives (delivery cuts a batch as soon as a full one waits by either).
    @Test func eachCommitReportsTheRowsItAppendedAndTheirBytes() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        let reported = NIOLockedValueBox<[SpoolWriter.AppendedRange]>([])
        writer.observeAppends { ranges in reported.withLockedValue { $0 += ranges } }
        writer.start()
        defer { writer.shutdown() }
        // One commit, two targets.
        let two = batch(
            (0..<3).map { #"{"i":\#($0),"pad":"\#(String(repeating: "x", count: $0 * 10))"}"# }
                + [#"{"data":[{"j":1},{"j":2}],"config":{"table":"bronze.other"}}"#])
        try await commit(two, to: writer)
        try await commit(batch([#"{"i":3}"#]), to: writer)
        let ranges = reported.withLockedValue { $0 }.sorted {
            ($0.target.table, $0.range.lowerBound) < ($1.target.table, $1.range.lowerBound)
        }
        #expect(ranges.map(\.target.table) == ["bronze.events", "bronze.events", "bronze.other"])
        #expect(ranges.map(\.range) == [0..<3, 3..<4, 0..<2])
        let reader = try SpoolReader(path: path)
        for range in ranges {
            let (records, _) = try reader.read(
                targetID: range.targetID, from: range.range.lowerBound, end: range.range.upperBound, maxRows: .max, maxBytes: .max)
            #expect(records.bytes.count == range.bytes, "\(range)")
        }
    }

    @Test func anIdleWriterSettlesWhatItAppendedOnceTheIntervalIsOver() async throws {
        let interval = Duration.seconds(3)
        let writer = try SpoolWriter(
            path: path, durability: .full, maxBytes: 1 << 30, settleInterval: interval, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        let first = ContinuousClock.now
        try await commit(batch([#"{"i":0}"#]), to: writer)
        try await commit(batch([#"{"i":1}"#, #"{"i":2}"#]), to: writer)
        let db = try SpoolDatabase.openForReading(path: path)
        // Within the interval the second commit left the row as the first settled it (on a machine so busy
        // that the interval is over by now, that commit settled it itself, which says nothing here).
        let row = try targetRow(db)
        if ContinuousClock.now - first < interval { #expect(row.nextSeq == 1) }
        // No further commit: the writer wakes by itself once the interval is over.
        let deadline = ContinuousClock.now + .seconds(10)
        while try targetRow(db).nextSeq != 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(try targetRow(db).nextSeq == 3)
    }

    @Test func aSecondAppenderSuchAsDLQReplayContinuesTheLogWhereTheWriterLeftIt() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        try await commit(batch([#"{"i":0}"#]), to: writer)
        try await commit(batch([#"{"i":1}"#]), to: writer)  // not settled yet
        // Another connection (the CLI's) appends between the writer's commits.
        let other = try SpoolDatabase.openForMaintenance(path: path)
        try other.execute("BEGIN IMMEDIATE")
        let seqs = try SegmentLog.append(ArraySlice(Array("{\"i\":2}\n".utf8)), count: 1, targetID: 1, tags: "", at: 0, db: other)
        try other.execute("COMMIT")
        #expect(seqs == 2..<3)
        try await commit(batch([#"{"i":3}"#]), to: writer)
        let reader = try SpoolReader(path: path)
        let (records, _) = try reader.read(targetID: 1, from: 0, end: 10, maxRows: .max, maxBytes: .max)
        #expect(records.seqs == [0, 1, 2, 3])
        #expect(String(decoding: records.newlineSeparated, as: UTF8.self) == "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"i\":3}\n")
    }
}

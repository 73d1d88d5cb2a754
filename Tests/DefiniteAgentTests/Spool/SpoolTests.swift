import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Spool")
struct SpoolTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("spool-tests")
    }

    func batch(_ lines: [String], config: AgentConfiguration) -> SpoolBatch {
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        for line in lines { _ = parser.parse(line: Array(line.utf8), into: &batch) }
        return batch
    }

    /// Records of ~1 KiB each (`{"i":…,"pad":"ppp…"}`), numbered `range`.
    func paddedLines(_ range: Range<Int>) -> [String] {
        let pad = String(repeating: "p", count: 1000)
        return range.map { "{\"i\":\($0),\"pad\":\"\(pad)\"}" }
    }

    /// `count` padded records for `bronze.events`, numbered from `first`.
    func paddedBatch(_ first: Int, _ count: Int) -> SpoolBatch {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        return batch(paddedLines(first..<first + count), config: config)
    }

    /// `rm spool.db*` (or a file moved over it) while the daemon ran: it went on acknowledging records into
    /// the removed file, lost at the next start, and a second daemon could open a new spool at the path.
    /// From the first commit after, every record is refused, saying why.
    @Test(arguments: [false, true]) func aSpoolFileRemovedOrReplacedRefusesEveryRecordAfter(replaced: Bool) async throws {
        let spool = try TestSpool("spool-gone")
        defer { spool.shutDown() }
        try await spool.writer.spoolAndWait(paddedBatch(0, 3))
        for suffix in ["", "-wal", "-shm"] { unlink(spool.path + suffix) }
        if replaced { #expect(FileManager.default.createFile(atPath: spool.path, contents: Data())) }
        for attempt in 0..<2 {
            do {
                try await spool.writer.spoolAndWait(paddedBatch(3 + attempt, 1))
                Issue.record("a record was acknowledged into a spool file no longer at its path")
            } catch let error as SpoolWriteError {
                #expect(error.code == .storage)
                #expect(error.message.contains(replaced ? "was replaced by another file" : "was removed"), "\(error)")
            }
        }
        // `status`, `/readyz` and the gauge learn it from the capacity, and it does not end with room.
        let refusal = try #require(spool.writer.capacity.refusal)
        #expect(refusal.reason == .spoolFileGone && !refusal.endsWithRoom)
        #expect(refusal.summary.contains(replaced ? "was replaced by another file" : "was removed"), "\(refusal)")
        spool.writer.capacity.diskHasRoom()
        #expect(spool.writer.capacity.refusal?.reason == .spoolFileGone)
    }

    /// After a restart `status` showed the state the last daemon left ("backing off until <then>") as this
    /// daemon's, until its first answer; the new daemon sends at once.
    @Test func aStartForgetsTheStateTheLastDaemonLeft() async throws {
        let spool = try TestSpool("state-left")
        try await spool.writer.spoolAndWait(paddedBatch(0, 3))
        spool.shutDown()
        do {
            let db = try SQLiteConnection(path: spool.path, mode: .readWrite)
            try db.execute("UPDATE targets SET state = 'backing off', state_until = 4102444800")
        }
        #expect(try SpoolStatus.read(path: spool.path).targets.map { $0.deliveryState?.kind } == [.backingOff])
        let writer = try SpoolWriter(path: spool.path, durability: .normal, maxBytes: 1 << 30, logger: quietLogger)
        writer.start()
        defer { writer.shutdown() }
        let targets = try SpoolStatus.read(path: spool.path).targets
        #expect(targets.map(\.deliveryState) == [nil] && targets.map(\.stateUntil) == [nil] && targets.map(\.pending) == [3])
    }

    /// Submits `batch` and waits until it is durable.
    func commit(_ batch: SpoolBatch, to writer: SpoolWriter) async throws {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        writer.submit(batch, promise: promise)
        try await promise.futureResult.get()
    }

    func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
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
        let rows = try db.prepared(
            "SELECT s.first_seq, s.record_count, \(SegmentLog.records) FROM segments s WHERE s.target_id = 1 ORDER BY s.first_seq")
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
        let lines = paddedLines(0..<3000)
        try await commit(batch(lines, config: config), to: writer)
        writer.shutdown()

        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared(
            "SELECT s.first_seq, s.record_count, s.byte_count, \(SegmentLog.records), s.records_id FROM segments s ORDER BY s.first_seq")
        var next = 0
        var decoded: [String] = []
        var segments = 0
        while try rows.step() {
            segments += 1
            #expect(rows.int(0) == next)
            #expect(rows.int(2) <= SegmentLog.maxSegmentBytes + 1100)
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
        let plan = try db.prepared("EXPLAIN QUERY PLAN " + TargetLog.removeDelivered)
        var details: [String] = []
        while try plan.step() { details.append(plan.string(3) ?? "") }
        plan.reset()
        // A search bounded on first_seq, not one over every segment of the target.
        #expect(details == ["SEARCH segments USING PRIMARY KEY (target_id=? AND first_seq<?)"])
    }

    @Test func theCheckpointerCopiesTheWALIntoTheFileWhileTheWriterGoesOn() async throws {
        let path = directory + "/spool.db"
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        await writer.startCheckpointer()
        // ~6 MiB: past the checkpointer's step (4 MiB), short of the size at which SQLite's own automatic
        // checkpoint (16 MiB) would copy anything. Only the checkpointer thread moves pages into the file.
        for part in 0..<6 { try await commit(paddedBatch(part * 1000, 1000), to: writer) }
        let deadline = ContinuousClock.now + .seconds(20)
        // The first step copies about 4 MiB of frames (the records and the pages above them).
        while fileSize(path) < 3 << 20, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(fileSize(path) >= 3 << 20, "the spool file holds only \(fileSize(path)) bytes; the WAL was not checkpointed")

        // The writer is unaffected: it goes on committing, and every record is there in order.
        try await commit(paddedBatch(6000, 10), to: writer)
        writer.shutdown()
        let status = try SpoolStatus.read(path: path)
        #expect(status.pending == 6010)
        let db = try SpoolDatabase.openForReading(path: path)
        let rows = try db.prepared("SELECT first_seq, record_count FROM segments ORDER BY first_seq")
        var next = 0
        while try rows.step() {
            #expect(rows.int(0) == next)
            next += rows.int(1)
        }
        rows.reset()
        #expect(next == 6010)
    }

    @Test func aNewSpoolHas4KiBPagesAndAnOlderSpoolKeepsItsOwn() async throws {
        let fresh = directory + "/fresh.db"
        do {
            let writer = try SpoolWriter(path: fresh, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
            writer.start()
            try await commit(paddedBatch(0, 10), to: writer)
            writer.shutdown()
        }
        #expect(try SpoolDatabase.openForReading(path: fresh).scalar("PRAGMA page_size") == 4096)

        // A spool as the release before made it: 16 KiB pages.
        let older = directory + "/older.db"
        do {
            let db = try SQLiteConnection(path: older, mode: .readWrite)
            try db.execute("PRAGMA page_size = 16384; PRAGMA journal_mode = WAL")
            try db.execute(SpoolSchema.migrations[0])
            try db.execute("PRAGMA application_id = \(SpoolSchema.applicationID); PRAGMA user_version = 1")
        }
        let writer = try SpoolWriter(path: older, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        for part in 0..<5 { try await commit(paddedBatch(part * 1000, 1000), to: writer) }
        writer.shutdown()
        let db = try SpoolDatabase.openForReading(path: older)
        #expect(try db.scalar("PRAGMA page_size") == 16_384)
        #expect(try db.scalar("SELECT sum(record_count) FROM segments") == 5000)
        let check = try db.prepared("PRAGMA integrity_check")
        #expect(try check.step())
        #expect(check.string(0) == "ok")
        check.reset()
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

    /// The commands said "disk I/O error (SQLite code 10)" for a directory at the spool's path.
    @Test func theCommandsSayWhatIsAtTheSpoolsPathWhenItIsNotAFile() throws {
        let path = directory + "/spool.db"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        for open in [{ _ = try SpoolDatabase.openForReading(path: path) }, { _ = try SpoolDatabase.openForMaintenance(path: path) }] {
            #expect {
                try open()
            } throws: {
                let error = $0 as? SpoolError
                return error?.code == .notASpool && error?.message.hasPrefix("it is a directory, not a regular file") == true
            }
        }
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
        capacity.storedChanged(by: -50)
        #expect(capacity.reserve(50))
        #expect(capacity.usedBytes == 100)
    }
}

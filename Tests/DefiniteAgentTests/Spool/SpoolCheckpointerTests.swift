import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import DefiniteAgent

@Suite("Spool checkpointer and page size")
struct SpoolCheckpointerTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "checkpointer-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// `count` records of ~1 KiB each for `bronze.events`, numbered from `first`.
    func batch(_ first: Int, _ count: Int) -> IntakeBatch {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        var parser = IntakeLineParser(configuration: config)
        var batch = IntakeBatch()
        let pad = String(repeating: "p", count: 1000)
        for i in first..<first + count { _ = parser.parse(line: Array("{\"i\":\(i),\"pad\":\"\(pad)\"}".utf8), into: &batch) }
        return batch
    }

    func commit(_ batch: IntakeBatch, to writer: SpoolWriter) async throws {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        writer.submit(batch, promise: promise)
        try await promise.futureResult.get()
    }

    func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    }

    @Test func theCheckpointerCopiesTheWALIntoTheFileWhileTheWriterGoesOn() async throws {
        let path = directory + "/spool.db"
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        // ~6 MiB: past the checkpointer's step (4 MiB), short of the size at which SQLite's own automatic
        // checkpoint (16 MiB) would copy anything. Only the checkpointer thread moves pages into the file.
        for part in 0..<6 { try await commit(batch(part * 1000, 1000), to: writer) }
        let deadline = ContinuousClock.now + .seconds(20)
        while fileSize(path) < 4 << 20, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(fileSize(path) >= 4 << 20, "the spool file holds only \(fileSize(path)) bytes; the WAL was not checkpointed")

        // The writer is unaffected: it goes on committing, and every record is there in order.
        try await commit(batch(6000, 10), to: writer)
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

    @Test func aNewSpoolHas16KiBPagesAndAnOlderSpoolKeepsItsOwn() async throws {
        let fresh = directory + "/fresh.db"
        do {
            let writer = try SpoolWriter(path: fresh, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
            writer.start()
            try await commit(batch(0, 10), to: writer)
            writer.shutdown()
        }
        #expect(try SpoolDatabase.openForReading(path: fresh).scalar("PRAGMA page_size") == 16_384)

        // A spool as the versions before made it: SQLite's default 4 KiB pages.
        let older = directory + "/older.db"
        do {
            let db = try SQLiteConnection(path: older, mode: .readWrite)
            try db.execute("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL")
            try db.execute(SpoolSchema.migrations[0])
            try db.execute("PRAGMA application_id = \(SpoolSchema.applicationID); PRAGMA user_version = 1")
        }
        let writer = try SpoolWriter(path: older, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        for part in 0..<5 { try await commit(batch(part * 1000, 1000), to: writer) }
        writer.shutdown()
        let db = try SpoolDatabase.openForReading(path: older)
        #expect(try db.scalar("PRAGMA page_size") == 4096)
        #expect(try db.scalar("SELECT sum(record_count) FROM segments") == 5000)
        let check = try db.prepared("PRAGMA integrity_check")
        #expect(try check.step())
        #expect(check.string(0) == "ok")
        check.reset()
    }
}

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

/// The ledger's transactions on a real spool, and the spool written by the previous release.
@Suite("DeliveryLedger")
struct DeliveryLedgerTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("ledger-tests")
    }

    /// A started writer on a new spool holding `count` records of `bronze.events` (seqs 0..<count).
    func spool(records count: Int) async throws -> (SpoolWriter, String) {
        let path = directory + "/spool.db"
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        for i in 0..<count { _ = parser.parse(line: Array("{\"i\":\(i)}".utf8), into: &batch) }
        #expect(writer.capacity.reserve(batch.totalBytes))
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        writer.submit(batch, promise: promise)
        try await promise.futureResult.get()
        return (writer, path)
    }

    @Test func isolationProgressIsKeptInTheSpoolUntilTheBatchIsFinished() async throws {
        let (writer, path) = try await spool(records: 8)
        defer { writer.shutdown() }
        let ledger = DeliveryLedger(writer: writer)
        let reader = try SpoolReader(path: path)
        let targetID = try #require(try reader.targets().first?.id)
        let (records, _) = try reader.read(targetID: targetID, from: 0, end: 8, maxRows: .max, maxBytes: .max)
        let batch = DeliveryLedger.Batch(id: "b1", range: 0..<8)

        var register = DeliveryLedger.Change(targetID: targetID)
        register.register = batch
        try ledger.apply(register, records: records)
        let refusal = DeliveryLedger.Refusal(status: 400, reason: "rejected by the API: bad", errors: ["bad", "worse"], requestID: "req_1")
        var step = DeliveryLedger.Change(targetID: targetID)
        step.delivered = [0, 1]
        step.progress = DeliveryLedger.Progress(batchID: "b1", parts: [
            .init(range: 2..<4, refusal: refusal), .init(range: 4..<8, refusal: nil),
        ])
        step.attempt = DeliveryLedger.Attempt(batchID: "b1", status: 400, error: "HTTP 400: bad")
        step.state = .isolating
        let released = try ledger.apply(step, records: records)
        #expect(released == records.storedSize(0) + records.storedSize(1))

        // What a restart reads back.
        let open = try reader.openBatches()
        #expect(open == [SpoolReader.BatchRow(id: "b1", targetID: targetID, firstSeq: 0, endSeq: 8, attempts: 1, parts: [
            .init(range: 2..<4, refusal: refusal), .init(range: 4..<8, refusal: nil),
        ])])
        let (left, _) = try reader.read(targetID: targetID, from: 0, end: 8, maxRows: .max, maxBytes: .max)
        #expect(left.seqs == [2, 3, 4, 5, 6, 7])
        let status = try SpoolStatus.read(path: path)
        #expect(status.pending == 6 && status.targets[0].state == TargetState.Kind.isolating.rawValue)

        var last = DeliveryLedger.Change(targetID: targetID)
        last.delivered = [3, 4, 5, 6, 7]
        last.deadLetters = [.init(seqs: [2], failure: .init(
            reason: refusal.reason, status: 400, errors: refusal.errors, warnings: [], requestID: "req_1", attempts: 3,
            partial: false, firstFailedAt: Date()))]
        last.finished = batch
        last.state = .delivering
        last.succeededAt = Date()
        try ledger.apply(last, records: records)
        #expect(try reader.openBatches().isEmpty)
        let after = try SpoolStatus.read(path: path)
        #expect(after.pending == 0 && after.deadLetters == 1 && after.targets[0].state == nil && after.targets[0].lastError == nil)
        let entry = try #require(try DeadLetterStore(path: path).list().first)
        #expect(entry.rows == 1 && entry.errors == #"["bad","worse"]"# && entry.requestID == "req_1" && !entry.partial)
    }

    @Test func aBatchRegisteredWithSupersededRowsReleasesTheirBytesAtOnce() async throws {
        let (writer, path) = try await spool(records: 4)
        defer { writer.shutdown() }
        let reader = try SpoolReader(path: path)
        let targetID = try #require(try reader.targets().first?.id)
        let (records, _) = try reader.read(targetID: targetID, from: 0, end: 4, maxRows: .max, maxBytes: .max)
        var register = DeliveryLedger.Change(targetID: targetID)
        register.register = DeliveryLedger.Batch(id: "b", range: 0..<4)
        register.superseded = [0, 2]
        let held = writer.capacity.usedBytes
        let released = try DeliveryLedger(writer: writer).apply(register, records: records)
        #expect(released == records.storedSize(0) + records.storedSize(2))
        #expect(try SpoolStatus.read(path: path).pending == 2)
        #expect(held > 0)
    }

    /// `Tests/Fixtures/spool-v1.db` was written by the release before schema version 2 (commit bd1f7fc, see
    /// `Tests/Fixtures/make-spool-v1.py`): 50 pending rows of an append table in an open batch that failed
    /// with a 5xx, 30 of a merge table (20 in an open batch), 20 rows delivered and one dead letter.
    @Test func aSpoolWrittenByTheReleaseBeforeIsMigratedWithNothingLost() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures/spool-v1.db").path
        let path = directory + "/spool.db"
        try FileManager.default.copyItem(atPath: fixture, toPath: path)
        let before = try SpoolStatus.read(path: path)
        #expect(before.pending == 80 && before.deadLetters == 1)

        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        let db = try SpoolDatabase.openForReading(path: path)
        #expect(try db.scalar("PRAGMA user_version") == Int64(SpoolSchema.currentVersion))
        #expect(try db.scalar("SELECT count(*) FROM batch_parts") == 0)
        let after = try SpoolStatus.read(path: path)
        func summary(_ status: SpoolStatus) -> [String] {
            status.targets.map { "\($0.table) \($0.pending) \($0.pendingBytes) \($0.deadLetters) \($0.state ?? "-") \($0.lastError ?? "-")" }
        }
        #expect(summary(after) == summary(before))
        let open = try SpoolReader(path: path).openBatches()
        #expect(open.map(\.parts) == [[], []] && open.map { $0.endSeq - $0.firstSeq } == [20, 20])
        let entries = try DeadLetterStore(path: path).list()
        #expect(entries.count == 1 && entries[0].status == 400 && entries[0].rows == 1)
        // Delivery resumes both open batches.
        var configuration = AgentConfiguration()
        configuration.spool.path = path
        let loop = try DeliveryLoop(settings: LiveConfiguration(configuration), writer: writer, key: APIKeyBox(nil), logger: Logger(label: "test"))
        #expect(loop.isIdle)
    }
}

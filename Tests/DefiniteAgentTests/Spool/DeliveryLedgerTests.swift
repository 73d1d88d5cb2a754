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
        try await writer.spoolAndWait(batch)
        return (writer, path)
    }

    /// The only target of the spool at `path`, and its rows `seqs` as delivery reads them.
    func rows(_ seqs: Range<Int64>, of path: String) throws -> (targetID: Int64, records: SpooledRecords) {
        let reader = try SpoolReader(path: path)
        let targetID = try #require(try reader.targets().first?.id)
        let (records, _) = try reader.read(targetID: targetID, from: seqs.lowerBound, end: seqs.upperBound, maxRows: .max, maxBytes: .max)
        return (targetID, records)
    }

    /// A dead letter of `seqs`, refused with `status`.
    static func refused(_ seqs: [Int64], status: Int = 400) -> DeliveryLedger.DeadLetter {
        .init(
            seqs: seqs,
            failure: .init(
                reason: "rejected", status: status, errors: ["bad"], warnings: [], attempts: 1, partial: false, firstFailedAt: Date()))
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
        step.progress = DeliveryLedger.Progress(
            batchID: "b1",
            parts: [
                .init(range: 2..<4, refusal: refusal), .init(range: 4..<8, refusal: nil),
            ])
        step.attempt = DeliveryLedger.Attempt(batchID: "b1", status: 400, error: "HTTP 400: bad")
        step.state = .isolating
        try ledger.apply(step, records: records)
        // Rows 0 and 1 are delivered but their segment (0..<8) is not passed yet: nothing left the spool.
        #expect(try capacityMatchesTheDatabase(writer, path))

        // What a restart reads back.
        let open = try reader.openBatches()
        #expect(
            open == [
                SpoolReader.BatchRow(
                    id: "b1", targetID: targetID, firstSeq: 0, endSeq: 8, attempts: 1,
                    parts: [
                        .init(range: 2..<4, refusal: refusal), .init(range: 4..<8, refusal: nil),
                    ])
            ])
        let (left, _) = try reader.read(targetID: targetID, from: 0, end: 8, maxRows: .max, maxBytes: .max)
        #expect(left.seqs == [2, 3, 4, 5, 6, 7])
        let status = try SpoolStatus.read(path: path)
        #expect(status.pending == 6 && status.targets[0].state == TargetState.Kind.isolating.rawValue)

        var last = DeliveryLedger.Change(targetID: targetID)
        last.delivered = [3, 4, 5, 6, 7]
        last.deadLetters = [
            .init(
                seqs: [2],
                failure: .init(
                    reason: refusal.reason, status: 400, errors: refusal.errors, warnings: [], requestID: "req_1", attempts: 3,
                    partial: false, firstFailedAt: Date()))
        ]
        last.finished = batch
        last.state = .delivering
        last.succeededAt = Date()
        try ledger.apply(last, records: records)
        #expect(try capacityMatchesTheDatabase(writer, path))
        #expect(try reader.openBatches().isEmpty)
        let after = try SpoolStatus.read(path: path)
        #expect(after.pending == 0 && after.deadLetters == 1 && after.targets[0].state == nil && after.targets[0].lastError == nil)
        let entry = try #require(try DeadLetterStore(path: path).list().first)
        #expect(entry.rows == 1 && entry.errors == #"["bad","worse"]"# && entry.requestID == "req_1" && !entry.partial)
    }

    @Test func aBatchRegisteredWithSupersededRowsLeavesThePendingCount() async throws {
        let (writer, path) = try await spool(records: 4)
        defer { writer.shutdown() }
        let reader = try SpoolReader(path: path)
        let targetID = try #require(try reader.targets().first?.id)
        let (records, _) = try reader.read(targetID: targetID, from: 0, end: 4, maxRows: .max, maxBytes: .max)
        var register = DeliveryLedger.Change(targetID: targetID)
        register.register = DeliveryLedger.Batch(id: "b", range: 0..<4)
        register.superseded = [0, 2]
        #expect(writer.capacity.usedBytes > 0)
        try DeliveryLedger(writer: writer).apply(register, records: records)
        #expect(try SpoolStatus.read(path: path).pending == 2)
        #expect(try capacityMatchesTheDatabase(writer, path))
    }

    /// The writer's count of stored bytes against the database's own total.
    func capacityMatchesTheDatabase(_ writer: SpoolWriter, _ path: String) throws -> Bool {
        let db = try SpoolDatabase.openForReading(path: path)
        let stored = try SpoolWriter.storedBytes(db)
        #expect(writer.capacity.storedBytes == stored, "the capacity count drifted from the spool")
        return writer.capacity.storedBytes == stored
    }

    /// Room another process makes (`dlq purge`) is seen at the writer's next round of commits: SQLite's
    /// `data_version` says another connection committed, and the writer re-reads the stored total.
    @Test func aPurgeByAnotherProcessIsSeenAtTheNextCommit() async throws {
        let (writer, path) = try await spool(records: 4)
        defer { writer.shutdown() }
        let (targetID, records) = try rows(0..<4, of: path)
        var change = DeliveryLedger.Change(targetID: targetID)
        change.deadLetters = [Self.refused([0, 1, 2, 3])]
        try DeliveryLedger(writer: writer).apply(change, records: records)
        #expect(try capacityMatchesTheDatabase(writer, path))
        let held = writer.capacity.storedBytes

        _ = try DeadLetterStore(path: path).purge(.all)  // its own connection, as `dlq purge` would

        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        _ = parser.parse(line: Array(#"{"i":99}"#.utf8), into: &batch)
        try await writer.spoolAndWait(batch)
        #expect(try capacityMatchesTheDatabase(writer, path))
        #expect(writer.capacity.storedBytes < held)
    }

    /// A later batch finishing while an earlier one waits leaves its rows in `delivered_ranges`: as runs
    /// (delivered, dead-lettered) and as the batch's whole range. `status` counts pending rows as the log
    /// less those ranges, so overlapping ranges once counted rows twice (pending 10 rows showed -1).
    @Test func rowsLeftAheadOfAWaitingBatchAreCountedOnceInPending() async throws {
        let (writer, path) = try await spool(records: 10)
        defer { writer.shutdown() }
        let (targetID, records) = try rows(4..<10, of: path)
        var change = DeliveryLedger.Change(targetID: targetID)
        change.register = DeliveryLedger.Batch(id: "b2", range: 4..<10)
        try DeliveryLedger(writer: writer).apply(change, records: records)
        change = DeliveryLedger.Change(targetID: targetID)
        change.delivered = [4, 6, 7, 9]
        change.deadLetters = [Self.refused([5, 8], status: 200)]
        change.finished = DeliveryLedger.Batch(id: "b2", range: 4..<10)
        try DeliveryLedger(writer: writer).apply(change, records: records)
        let status = try SpoolStatus.read(path: path)
        #expect(status.targets.map(\.pending) == [4], "rows 0..<4 wait behind the earlier batch")
        #expect(DeliveryLedger.disjointUnion([6..<7, 4..<5, 9..<10, 7..<8, 5..<5, 4..<10]) == [4..<10])
        #expect(DeliveryLedger.disjointUnion([0..<2, 3..<4, 2..<3, 8..<9]) == [0..<4, 8..<9])
    }

    /// `dlq export` reads in chunks, each one short read, so a slow reader of its output pins no snapshot:
    /// every entry comes once, in order, whatever the chunk size.
    @Test func anExportReadInChunksGivesEveryEntryOnceInOrder() async throws {
        let (writer, path) = try await spool(records: 6)
        defer { writer.shutdown() }
        let (targetID, records) = try rows(0..<6, of: path)
        var change = DeliveryLedger.Change(targetID: targetID)
        change.deadLetters = (0..<6).map { Self.refused([$0]) }
        try DeliveryLedger(writer: writer).apply(change, records: records)
        let store = DeadLetterStore(path: path)
        for maxBytes in [1, 20, 1 << 20] {
            var exported: [String] = []
            var last: Int64 = 0
            var reads = 0
            while true {
                let entries = try store.export(table: nil, after: last, maxBytes: maxBytes)
                guard let end = entries.last?.id else { break }
                exported += entries.map { String(decoding: $0.records, as: UTF8.self) }
                last = end
                reads += 1
            }
            #expect(exported == (0..<6).map { "{\"i\":\($0)}\n" }, "maxBytes \(maxBytes)")
            #expect(reads == (maxBytes == 1 ? 6 : maxBytes == 20 ? 2 : 1), "maxBytes \(maxBytes)")  // rows of 8 bytes
        }
        #expect(try store.export(table: "bronze.other", after: 0).isEmpty)
    }

    /// Capacity has one owner and follows every commit exactly, with no re-reading of the database:
    /// seeded random appends (several targets, records big enough to span segments) and delivery changes
    /// (rows delivered in and out of order, superseded, dead-lettered, whole batches finished) leave the
    /// count equal to the database's stored total after each commit.
    @Test(arguments: [1, 2, 3, 4, 5])
    func theCapacityCountFollowsEveryCommitExactly(seed: UInt64) async throws {
        var random = SplitMix64(seed: seed)
        let path = directory + "/capacity-\(seed).db"
        let writer = try SpoolWriter(path: path, durability: .normal, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        let ledger = DeliveryLedger(writer: writer)
        let tables = ["bronze.a", "bronze.b", "bronze.c"]
        for round in 0..<30 {
            // Appends: a burst of requests to random tables.
            var parser = IntakeLineParser(configuration: AgentConfiguration())
            var batch = SpoolBatch()
            for _ in 0..<Int.random(in: 1...20, using: &random) {
                let table = tables[Int.random(in: 0..<tables.count, using: &random)]
                let rows = Int.random(in: 1...5, using: &random)
                let padding = String(repeating: "x", count: Int.random(in: 0...700, using: &random))
                let data = (0..<rows).map { _ in "{\"r\":\(round),\"p\":\"\(padding)\"}" }.joined(separator: ",")
                let parsed = parser.parse(line: Array("{\"config\":{\"table\":\"\(table)\"},\"data\":[\(data)]}".utf8), into: &batch)
                if case .success(let accepted) = parsed.result {
                    let admitted = batch.admit(accepted, into: writer.capacity)
                    #expect(admitted)
                }
            }
            let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
            writer.submit(batch, promise: promise)
            try await promise.futureResult.get()
            #expect(try capacityMatchesTheDatabase(writer, path))

            // Delivery: for a random target, a change over some of its pending rows.
            let reader = try SpoolReader(path: path)
            let targets = try reader.targets()
            let target = targets[Int.random(in: 0..<targets.count, using: &random)]
            let (records, _) = try reader.read(
                targetID: target.id, from: target.deliveredSeq, end: target.nextSeq,
                maxRows: Int.random(in: 1...40, using: &random), maxBytes: .max)
            guard !records.isEmpty else { continue }
            var seqs = Array(records.seqs)
            var change = DeliveryLedger.Change(targetID: target.id)
            let batchRange = seqs.first!..<(seqs.last! + 1)
            let batchID = "b\(round)"
            change.register = DeliveryLedger.Batch(id: batchID, range: batchRange)
            try ledger.apply(change, records: records)
            #expect(try capacityMatchesTheDatabase(writer, path))
            change = DeliveryLedger.Change(targetID: target.id)
            switch Int.random(in: 0..<4, using: &random) {
            case 0:  // delivered whole
                change.delivered = seqs
                change.finished = DeliveryLedger.Batch(id: batchID, range: batchRange)
            case 1:  // some rows out of order, the batch stays open
                seqs.shuffle(using: &random)
                change.delivered = Array(seqs.prefix(seqs.count / 2)).sorted()
            case 2:  // one row dead-lettered, the rest delivered
                let bad = seqs.removeLast()
                change.delivered = seqs
                change.deadLetters = [
                    .init(
                        seqs: [bad],
                        failure: .init(
                            reason: "rejected", status: 400, errors: ["bad"], warnings: [], attempts: 1, partial: false,
                            firstFailedAt: Date()))
                ]
                change.finished = DeliveryLedger.Batch(id: batchID, range: batchRange)
            default:  // superseded (merge), delivered
                change.superseded = Array(seqs.prefix(1))
                change.delivered = Array(seqs.dropFirst())
                change.finished = DeliveryLedger.Batch(id: batchID, range: batchRange)
            }
            try ledger.apply(change, records: records)
            #expect(try capacityMatchesTheDatabase(writer, path))
        }
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
            status.targets.map { "\($0.table) \($0.pending) \($0.pendingBytes) \($0.deadLetters) \($0.lastError ?? "-")" }
        }
        #expect(summary(after) == summary(before))
        // The state the last daemon left is its own ("backing off"), not the new one's.
        #expect(before.targets.map(\.state) == ["backing off", "backing off"] && after.targets.allSatisfy { $0.state == nil })
        let open = try SpoolReader(path: path).openBatches()
        #expect(open.map(\.parts) == [[], []] && open.map { $0.endSeq - $0.firstSeq } == [20, 20])
        let entries = try DeadLetterStore(path: path).list()
        #expect(entries.count == 1 && entries[0].status == 400 && entries[0].rows == 1)
        // Delivery resumes both open batches.
        var configuration = AgentConfiguration()
        configuration.spool.path = path
        let loop = try DeliveryLoop(
            settings: LiveConfiguration(configuration), writer: writer, key: APIKeyBox(nil), logger: Logger(label: "test"))
        #expect(loop.isIdle)
    }
}

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

/// `config.tags` kept per run of records: requests with different tags share their target, keep their
/// order, and are batched together; each request says which of its rows had which tags.
@Suite("Tag runs")
struct TagRunsTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("tag-runs")
    }

    static let lines = [
        #"{"data":[{"n":0},{"n":1}],"config":{"table":"bronze.t","tags":{"trace_id":"a"}}}"#,
        #"{"data":{"n":2},"config":{"table":"bronze.t","tags":{"trace_id":"a"}}}"#,
        #"{"data":{"n":3},"config":{"table":"bronze.t"}}"#,
        #"{"data":{"n":4},"config":{"table":"bronze.t","tags":{"trace_id":"b"}}}"#,
        #"{"data":{"n":5},"config":{"table":"bronze.other","tags":{"trace_id":"c"}}}"#,
        #"{"data":{"n":6},"config":{"table":"bronze.t","tags":{"trace_id":"b"}}}"#,
    ]

    func batch(_ lines: [String]) -> SpoolBatch {
        var parser = IntakeLineParser(configuration: AgentConfiguration())
        var batch = SpoolBatch()
        for line in lines { _ = parser.parse(line: Array(line.utf8), into: &batch) }
        return batch
    }

    @Test func aBatchKeepsOneTargetPerTableWithRunsOfTags() {
        let batch = batch(Self.lines)
        #expect(batch.targets == [SpoolTarget(table: "bronze.t", mode: .append), SpoolTarget(table: "bronze.other", mode: .append)])
        #expect(batch.counts == [6, 1])
        #expect(
            batch.runs(of: 0).map { "\($0.count) \($0.tags)" } == [
                #"3 {"trace_id":"a"}"#, "1 ", #"2 {"trace_id":"b"}"#,
            ])
        #expect(batch.runs(of: 1).map(\.tags) == [#"{"trace_id":"c"}"#])
    }

    @Test func runsGoThroughTheSpoolIntoRequestsAndDeadLettersAndBack() async throws {
        let path = directory + "/spool.db"
        let writer = try SpoolWriter(path: path, durability: .normal, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        defer { writer.shutdown() }
        let intake = batch(Self.lines)
        try await writer.spoolAndWait(intake)

        let reader = try SpoolReader(path: path)
        let target = try #require(try reader.targets().first { $0.target.table == "bronze.t" })
        #expect(target.target.tags.isEmpty && target.nextSeq == 6)
        let (records, _) = try reader.read(targetID: target.id, from: 0, end: 6, maxRows: .max, maxBytes: .max)
        #expect(
            (0..<6).map { records.tags(of: $0) } == [
                #"{"trace_id":"a"}"#, #"{"trace_id":"a"}"#, #"{"trace_id":"a"}"#, "",
                #"{"trace_id":"b"}"#, #"{"trace_id":"b"}"#,
            ])
        // Every row in one request, which says which rows had which tags.
        let all = RequestBody.tags(of: records, target: target.target, batchID: "b1", host: "h")
        #expect(
            all
                == #"{"agent_batch":"b1","agent_host":"h","client_tags":[{"from":0,"to":3,"tags":{"trace_id":"a"}},{"from":4,"to":6,"tags":{"trace_id":"b"}}]}"#
        )
        // Rows of one tag set: their tags, flat, as the writer sent them.
        let same = RequestBody.tags(of: records.subset([4, 5]), target: target.target, batchID: "b1", host: "h")
        #expect(same == #"{"trace_id":"b","agent_batch":"b1","agent_host":"h"}"#)
        #expect(
            RequestBody.tags(of: records.subset([3]), target: target.target, batchID: "b1", host: "h")
                == #"{"agent_batch":"b1","agent_host":"h"}"#)
        // A target of a version-1 spool keeps its own tags.
        let legacy = SpoolTarget(table: "bronze.t", mode: .append, tags: #"{"old":1}"#)
        #expect(
            RequestBody.tags(of: records, target: legacy, batchID: "b1", host: "h") == #"{"old":1,"agent_batch":"b1","agent_host":"h"}"#)

        // A tag budget ends a batch before the run that would pass it.
        let (cut, next) = try reader.read(targetID: target.id, from: 0, end: 6, maxRows: .max, maxBytes: .max, maxTagBytes: 60)
        #expect(cut.count == 4 && next == 4)

        // Dead letters keep the runs, and a replay puts the rows back with their tags.
        var change = DeliveryLedger.Change(targetID: target.id)
        change.deadLetters = [
            .init(
                seqs: [2, 3, 4],
                failure: .init(
                    reason: "test", status: 400, errors: [], warnings: [], requestID: nil, attempts: 1, partial: false,
                    firstFailedAt: Date()))
        ]
        try DeliveryLedger(writer: writer).apply(change, records: records)
        let replayed = try DeadLetterStore(path: path).replay(.all)
        #expect(replayed.rows == 3)
        let (back, _) = try reader.read(targetID: target.id, from: 6, end: 9, maxRows: .max, maxBytes: .max)
        #expect(back.seqs == [6, 7, 8])
        #expect((0..<3).map { back.tags(of: $0) } == [#"{"trace_id":"a"}"#, "", #"{"trace_id":"b"}"#])
    }

    @Test func deadLetterTagRunsSplitAnEntrysRows() {
        let rows = Array("{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n".utf8)
        let runs = DeadLetterStore.tagRuns(rows, tags: #"[{"from":1,"to":3,"tags":{"t":"x"}}]"#)
        #expect(runs.map { "\($0.bytes) \($0.count) \($0.tags)" } == ["0..<8 1 ", #"8..<24 2 {"t":"x"}"#])
        #expect(DeadLetterStore.tagRuns(rows, tags: "").map(\.count) == [3])
    }
}

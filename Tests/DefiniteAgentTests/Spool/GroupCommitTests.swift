import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Core
@testable import Intake
@testable import Spool

/// When the writer waits for more of a bulk stream before a commit (``GroupCommit``), and that nothing
/// awaited waits for it.
@Suite("Group commit")
struct GroupCommitTests {
    @Test func onlyUnawaitedWorkAfterABulkCommitWaits() {
        var policy = GroupCommit()
        #expect(policy.delay(awaited: false, stopping: false, refusing: false) == nil, "no commit yet")
        policy.committed(records: GroupCommit.bulkRecords - 1)
        #expect(policy.delay(awaited: false, stopping: false, refusing: false) == nil, "a small commit: no stream")
        policy.committed(records: GroupCommit.bulkRecords)
        #expect(policy.delay(awaited: false, stopping: false, refusing: false) == GroupCommit.window)
        for (awaited, stopping, refusing) in [(true, false, false), (false, true, false), (false, false, true), (true, true, true)] {
            #expect(policy.delay(awaited: awaited, stopping: stopping, refusing: refusing) == nil, "\(awaited) \(stopping) \(refusing)")
        }
        policy.committed(records: 0)
        #expect(policy.delay(awaited: false, stopping: false, refusing: false) == nil, "a failed commit ends the stream")
    }

    let directory: String
    let path: String

    init() throws {
        directory = try makeTemporaryDirectory("group-commit-tests")
        path = directory + "/spool.db"
    }

    func batch(_ count: Int, from first: Int = 0) -> SpoolBatch {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        var parser = IntakeLineParser(configuration: config)
        var batch = SpoolBatch()
        for i in first..<first + count { _ = parser.parse(line: Array(#"{"i":\#(i)}"#.utf8), into: &batch) }
        return batch
    }

    func submit(_ batch: SpoolBatch, awaited: Bool, to writer: SpoolWriter) -> EventLoopFuture<Void> {
        #expect(writer.capacity.reserve(batch.totalBytes))
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        writer.submit(batch, promise: promise, awaited: awaited)
        return promise.futureResult
    }

    /// After a bulk commit, a batch nobody waits for waits for more before its commit, and what comes
    /// meanwhile joins it; the wait ends by itself. A batch somebody waits for (an ack) never waits, bulk
    /// or not, and neither does anything after a small commit (one record acknowledged at a time).
    @Test func onlyUnawaitedBatchesOfABulkStreamWaitForMore() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        let commits = NIOLockedValueBox(0)
        writer.observeAppends { _ in commits.withLockedValue { $0 += 1 } }
        writer.start()
        defer { writer.shutdown() }
        try await submit(batch(GroupCommit.bulkRecords), awaited: true, to: writer).get()
        try await submit(batch(1, from: 500), awaited: true, to: writer).get()
        #expect(writer.groupCommitWaits == 0, "awaited batches do not wait")

        try await submit(batch(GroupCommit.bulkRecords, from: 1000), awaited: true, to: writer).get()
        let before = commits.withLockedValue { $0 }
        let futures = (0..<20).map { submit(batch(1, from: 2000 + $0), awaited: false, to: writer) }
        for future in futures { try await future.get() }
        #expect(writer.groupCommitWaits >= 1, "unawaited batches after a bulk commit wait for more")
        let made = commits.withLockedValue { $0 } - before
        #expect(made <= 5, "\(made) commits for 20 batches of a bulk stream")

        // After those small commits the stream is over: the next unawaited batch goes at once.
        let waits = writer.groupCommitWaits
        try await submit(batch(1, from: 3000), awaited: false, to: writer).get()
        try await submit(batch(1, from: 3001), awaited: false, to: writer).get()
        #expect(writer.groupCommitWaits == waits)
        #expect(try SpoolStatus.read(path: path).pending == 2 * GroupCommit.bulkRecords + 1 + 20 + 2)
    }

    /// A stop while the writer waits for more commits what is queued.
    @Test func aStopDuringTheWaitCommitsWhatIsQueued() async throws {
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        writer.start()
        try await submit(batch(GroupCommit.bulkRecords), awaited: true, to: writer).get()
        let unawaited = submit(batch(3, from: 5000), awaited: false, to: writer)
        writer.shutdown()
        try await unawaited.get()
        #expect(try SpoolStatus.read(path: path).pending == GroupCommit.bulkRecords + 3)
    }
}

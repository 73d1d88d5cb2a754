import Foundation
import Testing

@testable import Core
@testable import Spool

/// `dlq replay` and `dlq purge` on a real spool: short transactions, each entry moved whole, and a spool
/// the daemon has not migrated yet.
extension DeliveryLedgerTests {
    /// A spool whose records `0..<deadLettered` were each dead-lettered as an entry of their own, out of
    /// `records`; the writer is returned still running.
    func deadLetters(_ deadLettered: Int, of records: Int) async throws -> (SpoolWriter, String) {
        let (writer, path) = try await spool(records: records)
        let (targetID, rows) = try rows(0..<Int64(records), of: path)
        var change = DeliveryLedger.Change(targetID: targetID)
        change.deadLetters = (0..<Int64(deadLettered)).map { Self.refused([$0]) }
        try DeliveryLedger(writer: writer).apply(change, records: rows)
        return (writer, path)
    }

    /// The rows of the spool's only target from `seq` on, as delivery would read them.
    func rows(from seq: Int64, of path: String) throws -> [String] {
        let reader = try SpoolReader(path: path)
        let target = try #require(try reader.targets().first)
        let (records, _) = try reader.read(targetID: target.id, from: seq, end: .max, maxRows: .max, maxBytes: .max)
        return records.seqs.indices.map { String(decoding: records.record($0), as: UTF8.self) }
    }

    /// A replay of a large dead-letter queue once held the write lock for the whole of it, and the
    /// daemon's commits (intake's acks) waited, failing after the 10 s busy timeout. Now the lock is free
    /// between transactions of a few MiB, every entry moves whole, and entries dead-lettered meanwhile
    /// (the replayed rows rejected again) are left for the next command instead of chasing them.
    @Test func aReplayMovesEntriesInShortTransactionsAndReleasesTheLockBetweenThem() async throws {
        let (writer, path) = try await deadLetters(40, of: 41)
        defer { writer.shutdown() }
        let store = DeadLetterStore(path: path)
        let entryBytes = try store.list().map(\.bytes)
        #expect(entryBytes.count == 40 && Set(entryBytes).count <= 2)

        var heard: [DeadLetterStore.Replay] = []
        let replayed = try store.replay(.all, bytesPerTransaction: 2 * entryBytes.max()!) { done in
            heard.append(done)
            // Another writer (the daemon) gets the lock at once: no transaction is open.
            let other = try! SQLiteConnection(path: path, mode: .readWrite)
            try! other.execute("PRAGMA busy_timeout = 0; BEGIN IMMEDIATE; COMMIT")
            // Each entry is either still a dead letter or back in the queue, never both nor neither.
            let left = try! store.list().filter { $0.firstSeq < 40 }.count
            #expect(left + done.entries == 40 && done.rows == done.entries)
            if heard.count == 1 {
                // The daemon dead-letters a row while the replay runs.
                let (targetID, rows) = try! self.rows(40..<41, of: path)
                var change = DeliveryLedger.Change(targetID: targetID)
                change.deadLetters = [Self.refused([40])]
                try! DeliveryLedger(writer: writer).apply(change, records: rows)
            }
        }
        #expect(replayed.entries == 40 && replayed.rows == 40)
        #expect(heard.count == 20 && heard.map(\.entries) == Array(stride(from: 2, through: 40, by: 2)))
        let left = try store.list()
        #expect(left.count == 1 && left.first?.firstSeq == 40, "the entry made during the replay waits for the next command")
        #expect(try rows(from: 41, of: path) == (0..<40).map { "{\"i\":\($0)}" }, "the rows are back in their order")
    }

    /// A transaction that fails after others committed: those entries stay replayed, the rest stay dead
    /// letters, and the error says so (running the command again finishes the job).
    @Test func aReplayThatFailsHalfWaySaysWhatItHadDone() async throws {
        let (writer, path) = try await deadLetters(6, of: 6)
        writer.shutdown()
        let store = DeadLetterStore(path: path)
        let entryBytes = try #require(try store.list().map(\.bytes).max())
        do {
            _ = try store.replay(.all, bytesPerTransaction: 2 * entryBytes) { _ in
                // The next transaction cannot open the spool.
                try! FileManager.default.moveItem(atPath: path, toPath: path + ".away")
            }
            Issue.record("the replay went on without its spool")
        } catch {
            #expect(error.code == .missing)
            #expect(
                error.message.hasSuffix(
                    "2 entries (2 rows) had been replayed before this, the others are still in the dead-letter queue: run the command again for them"
                ))
        }
        try FileManager.default.moveItem(atPath: path + ".away", toPath: path)
        #expect(try store.list().map(\.firstSeq) == [2, 3, 4, 5])
        #expect(try store.replay(.all) == DeadLetterStore.Replay(entries: 4, rows: 4))
        #expect(try rows(from: 6, of: path) == (0..<6).map { "{\"i\":\($0)}" })
    }

    @Test func aPurgeDeletesInShortTransactionsAndCountsWhatItDeleted() async throws {
        let (writer, path) = try await deadLetters(9, of: 9)
        defer { writer.shutdown() }
        let store = DeadLetterStore(path: path)
        #expect(try store.purge(.ids([3, 99])).missing == [99])
        #expect(try store.list().count == 9, "a mistyped id purges nothing")
        let purged = try store.purge(.all, bytesPerTransaction: 1)
        #expect(purged == DeadLetterStore.Purge(entries: 9, rows: 9))
        #expect(try store.list().isEmpty)
    }

    /// Operators act on ids from an earlier `dlq list`. The next entry once took the id of the last one
    /// purged or replayed, so a second `dlq purge --id` from that listing deleted rows nobody had looked at.
    @Test func anEntryIdIsNeverGivenTwice() async throws {
        let (writer, path) = try await deadLetters(3, of: 6)
        defer { writer.shutdown() }
        let store = DeadLetterStore(path: path)
        func deadLetter(_ seq: Int64) throws {
            let (targetID, rows) = try rows(seq..<(seq + 1), of: path)
            var change = DeliveryLedger.Change(targetID: targetID)
            change.deadLetters = [Self.refused([seq])]
            try DeliveryLedger(writer: writer).apply(change, records: rows)
        }
        #expect(try store.list().map(\.id) == [1, 2, 3])
        #expect(try store.purge(.ids([3])).entries == 1)
        try deadLetter(3)
        #expect(try store.list().map(\.id) == [1, 2, 4])
        #expect(try store.purge(.ids([3])).missing == [3], "the purged id stays gone")
        #expect(try store.replay(.all).entries == 3)
        try deadLetter(4)
        #expect(try store.list().map(\.id) == [5])
    }

    /// `--table` takes a table in either spelling, and finds the rows of a target a release before the
    /// canonical `ns.table` stored as `LAKE.ns.table`: `dlq list --table LAKE.bronze.events` once found
    /// nothing there, and neither did `--table bronze.events` on the old spelling.
    @Test func aTableIsSelectedByEitherSpellingOfItsName() async throws {
        let (writer, path) = try await deadLetters(3, of: 4)
        writer.shutdown()
        let store = DeadLetterStore(path: path)
        for stored in ["bronze.events", "LAKE.bronze.events"] {
            try SQLiteConnection(path: path, mode: .readWrite).execute("UPDATE targets SET table_name = '\(stored)'")
            for typed in ["bronze.events", "LAKE.bronze.events", "lake.bronze.events"] {
                #expect(try store.list(table: typed).count == 3, "\(typed) selects \(stored)")
                #expect(try store.export(table: typed, after: 0).count == 3)
                #expect(try QueuePeek.read(path: path, table: typed, limit: 5).map(\.seq) == [3])
            }
            for other in ["bronze.event", "LAKE.bronze", "silver.bronze.events", "xlake.bronze.events"] {
                #expect(try store.list(table: other).isEmpty, "\(other) is another table")
                #expect(try QueuePeek.read(path: path, table: other, limit: 5).isEmpty)
            }
        }
        // `lake.events` is table `events` of namespace `lake`: `events` (not a table name) is not its short form.
        try SQLiteConnection(path: path, mode: .readWrite).execute("UPDATE targets SET table_name = 'lake.events'")
        #expect(try store.list(table: "events").isEmpty && store.list(table: "lake.events").count == 3)
        #expect(try store.purge(.table("lake.events"), bytesPerTransaction: 1).entries == 3)
    }

    /// The CLI never migrates: the daemon of the release that wrote the spool may still run (a package
    /// upgraded, the service not yet restarted). It once failed with "no such column"; it now says what
    /// to do and changes nothing, and `status` still reads the spool.
    @Test(arguments: ["spool-v1.db", "spool-v2.db"])
    func theCLIAsksForTheDaemonToUpgradeASpoolOfAnEarlierRelease(fixture: String) throws {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures/\(fixture)").path
        let path = directory + "/spool.db"
        try FileManager.default.copyItem(atPath: source, toPath: path)
        let version = try SQLiteConnection(path: path, mode: .readOnly).scalar("PRAGMA user_version")
        #expect(version < SpoolSchema.currentVersion)

        let store = DeadLetterStore(path: path)
        let attempts: [(String, () throws(SpoolError) -> Void)] = [
            ("dlq list", { () throws(SpoolError) in _ = try store.list() }),
            ("dlq replay", { () throws(SpoolError) in _ = try store.replay(.all) }),
            ("dlq purge", { () throws(SpoolError) in _ = try store.purge(.all) }),
            ("queue peek", { () throws(SpoolError) in _ = try QueuePeek.read(path: path, table: nil, limit: 5) }),
        ]
        for (command, attempt) in attempts {
            do {
                try attempt()
                Issue.record("\(command) used a spool of schema \(version)")
            } catch {
                #expect(error.code == .olderSchema, "\(command): \(error)")
                #expect(error.message.contains("schema version \(version)") && error.message.contains("systemctl restart definite-agent"))
            }
        }
        #expect(try SpoolStatus.read(path: path).deadLetters == 1)
        let after = try SQLiteConnection(path: path, mode: .readOnly)
        #expect(try after.scalar("PRAGMA user_version") == version)
        #expect(try after.scalar("SELECT count(*) FROM dead_letters") == 1, "nothing was purged")
    }

    /// A spool another process keeps locked past the busy timeout (SQLITE_BUSY, 5: an sqlite3 shell in a transaction): the
    /// error said "database is locked" under the code for an unusable file; it now says what to do.
    @Test func aSpoolLockedByAnotherProcessSaysSo() {
        let error = SpoolDatabase.classify(
            SQLiteError(code: 5, extendedCode: 5, message: "database is locked", context: "executing PRAGMA"), path: "/s.db")
        #expect(error.code == .cannotOpen)
        #expect(error.message.hasPrefix("another process held the spool locked for over 10 s (database is locked)"))
        #expect(error.message.hasSuffix("Let it finish, then try again"))
    }
}

/// When the writer waits a moment before a commit, so that one commit and one `fdatasync` carry what would
/// have been several (the idea of PostgreSQL's `commit_delay`).
///
/// Only records nobody waits for wait: a connection's lines that ask for no ack. After a commit that
/// appended at least ``bulkRecords`` records (a bulk stream) the writer waits up to ``window`` before taking
/// such records, and what arrives meanwhile joins the commit. Anything awaited (a line asking for an ack,
/// an HTTP request, a datagram, whose thread blocks on its in-flight limit, delivery's bookkeeping) ends
/// the wait at once, and a writer acknowledging one record at a time never starts one. Durability is
/// unchanged: a record is acknowledged, and counted as stored, only once the commit holding it is durable.
package struct GroupCommit: Sendable, Equatable {
    /// The longest the writer waits before a commit.
    package static let window = Duration.milliseconds(1)
    /// Records the previous commit must have appended for the next one to wait.
    package static let bulkRecords = 256

    /// Records the last commit of appends stored.
    package private(set) var lastCommitRecords = 0

    package init() {}

    /// How long to wait before taking the queue, if at all: never for awaited work, while stopping or
    /// refusing intake (each waits for the commit that ends it), or after a commit that was not bulk.
    package func delay(awaited: Bool, stopping: Bool, refusing: Bool) -> Duration? {
        guard !awaited, !stopping, !refusing, lastCommitRecords >= Self.bulkRecords else { return nil }
        return Self.window
    }

    /// Notes a commit of appends (`records` stored; zero when it failed).
    package mutating func committed(records: Int) {
        lastCommitRecords = records
    }
}

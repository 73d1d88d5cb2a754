import CSQLite
import Core
import FoundationEssentials
import Glibc
import Logging

/// Copies committed pages from the spool's WAL into the spool file on a thread and connection of its
/// own, so that the writer's commits (and the acks waiting on them) seldom wait for a checkpoint.
///
/// Every commit appends pages to the WAL; a checkpoint copies them into the database file (a read of the
/// WAL, a write and an fsync of the file), and only a WAL that is wholly copied can be reused from its
/// start. Left to SQLite's automatic checkpoint, that copy runs on the writer, after the commit that
/// crossed the threshold, and took a third of the writer's time under full load. Here:
///
/// - After a commit that grew the WAL by ``stepBytes`` since the last signal, the writer wakes this
///   thread, which runs a *passive* checkpoint: it copies what is committed without blocking the writer
///   or any reader.
/// - Once the WAL holds ``limitBytes``, the writer itself runs the same passive checkpoint after each
///   commit (what SQLite's automatic checkpoint did, at the size the spool set for it). By then this thread has copied all
///   but the last pages, so the writer's share is small; it is needed because SQLite restarts a WAL only
///   in a writer that finds it wholly copied, which a writer that never stops seldom does otherwise.
///   If this thread holds the checkpoint lock at that moment, the writer skips and tries again at its
///   next commit.
///
/// - Important: Durability does not depend on checkpoints: a commit is acknowledged once it is in the
///   WAL (fsynced under `durability = "full"`). A checkpoint fsyncs the database file before it marks
///   pages as copied, so a crash at any point leaves either the WAL or the file holding every commit.
///
/// Thread confinement: `connection` is used only by the checkpointer thread; the writer's hook reaches
/// this object only through ``walGrew(to:writer:)``, which takes `condition`.
final class SpoolCheckpointer: @unchecked Sendable {
    /// WAL growth after which the writer wakes the checkpointer.
    static let stepBytes = 4 << 20
    /// WAL size from which the writer checkpoints too, after each commit.
    static let limitBytes = 16 << 20

    private let connection: SQLiteConnection
    private let logger: Logger
    private let stepFrames: Int
    private let limitFrames: Int
    private let condition = ConditionLock()
    /// WAL size, in frames, at the last wake-up (guarded by `condition`).
    private var signalledFrames = 0
    private var pending = false
    private var stopping = false
    private var stopped = false
    private var started = false
    /// When an error other than "busy" was last logged (at most once a minute).
    private var lastErrorLog: ContinuousClock.Instant?

    /// Opens the checkpointer's own connection to the spool the writer has already opened (and set to WAL).
    init(path: String, durability: AgentConfiguration.Durability, pageSize: Int, logger: Logger) throws(SpoolError) {
        self.connection = try SpoolDatabase.openForCheckpointing(path: path, durability: durability)
        self.logger = logger
        self.stepFrames = max(1, Self.stepBytes / pageSize)
        self.limitFrames = max(1, Self.limitBytes / pageSize)
    }

    /// Takes over checkpointing from SQLite's automatic checkpoint on `writer` and starts the thread (named
    /// `checkpointer`), once: a second call, or one after ``stop(writer:)``, does nothing.
    ///
    /// - Important: Call ``stop(writer:)`` before `writer` closes or this object goes away: the writer's
    ///   hook refers to it unretained.
    func start(writer: SQLiteConnection) {
        condition.lock()
        defer { condition.unlock() }
        guard !started, !stopping else { return }
        started = true
        sqlite3_wal_hook(
            writer.handle,
            { context, db, _, frames in
                guard let context, let db else { return SQLITE_OK }
                Unmanaged<SpoolCheckpointer>.fromOpaque(context).takeUnretainedValue().walGrew(to: Int(frames), writer: db)
                return SQLITE_OK
            }, Unmanaged.passUnretained(self).toOpaque())
        NamedThread.start("checkpointer") { [self] in run() }
    }

    /// Stops the thread after its current checkpoint and gives checkpointing back to SQLite on `writer`.
    func stop(writer: SQLiteConnection) {
        sqlite3_wal_hook(writer.handle, nil, nil)
        sqlite3_wal_autocheckpoint(writer.handle, Int32(limitFrames))
        condition.lock()
        stopping = true
        condition.broadcast()
        while started && !stopped { condition.wait() }
        condition.unlock()
    }

    /// Called by SQLite on the writer's thread after each commit, with the WAL's size in frames.
    private func walGrew(to frames: Int, writer: OpaquePointer) {
        if frames >= limitFrames {
            // The writer's share: short, since this thread has copied most of the WAL already.
            sqlite3_wal_checkpoint_v2(writer, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
        }
        condition.lock()
        // A restarted WAL counts from zero again.
        if frames < signalledFrames { signalledFrames = 0 }
        if frames - signalledFrames >= stepFrames {
            signalledFrames = frames
            pending = true
            condition.signal()
        }
        condition.unlock()
    }

    private func run() {
        // Checkpoints are intake's work: at intake's priority, they leave delivery its share of a busy
        // CPU (end to end in the bench: out 245k → 265k records/s). Falling behind only means the writer
        // does more of its share.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, IntakePriority.eventLoopNice)
        while true {
            condition.lock()
            while !pending && !stopping { condition.wait() }
            if stopping {
                stopped = true
                condition.broadcast()
                condition.unlock()
                return
            }
            pending = false
            condition.unlock()
            checkpoint()
        }
    }

    private func checkpoint() {
        let rc = sqlite3_wal_checkpoint_v2(connection.handle, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
        // Busy: the writer holds the checkpoint lock for its own share; the next wake-up catches up.
        guard rc != SQLITE_OK, rc & 0xFF != SQLITE_BUSY, rc & 0xFF != SQLITE_LOCKED else { return }
        let now = ContinuousClock.now
        guard lastErrorLog.map({ now - $0 > .seconds(60) }) ?? true else { return }
        lastErrorLog = now
        logger.warning(
            "background checkpoint of the spool failed; the writer checkpoints instead",
            metadata: [
                "error": "\(connection.error(rc, "checkpointing \(connection.path)"))"
            ])
    }
}

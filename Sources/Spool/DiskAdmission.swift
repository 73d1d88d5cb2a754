import Core
import Logging

/// Decides, commit by commit, whether intake may still write to the spool's disk, and keeps the WAL small
/// while it may not. The policy (what a commit costs, how much to keep) is ``DiskHeadroom``'s; this type
/// holds the state between commits.
///
/// Owned by the ``SpoolWriter`` thread and used only there, with the writer's connection.
struct DiskAdmission {
    /// What may be committed now.
    enum Outcome {
        /// Every batch fits; `resumed` when this ends a refusal.
        case all(resumed: Bool)
        /// Only the first `count` batches fit; the others are refused.
        case part(count: Int, Refusal)
    }

    /// Why a commit, or its tail, was refused: the figures for the writer's reply and for `status`.
    struct Refusal: Error {
        var filesystemFree: String
        var reserve: String
    }

    private let headroom: DiskHeadroom
    private let walPath: String
    /// WAL bytes intake may still stage before the reserve is reached, as last measured less what was
    /// committed since.
    private var stagingBudget = 0
    private var pageSize = 4096
    private var reserveBytes = 0
    private var lastMeasurement: ContinuousClock.Instant?
    private var lastCheckpointAttempt: ContinuousClock.Instant?
    /// Intake is refused for want of disk; ends at the next commit that fits.
    private(set) var isRefusing = false

    init(spoolPath: String, configuredReserve: Int?) {
        headroom = DiskHeadroom(spoolPath: spoolPath, configuredReserve: configuredReserve)
        walPath = spoolPath + "-wal"
    }

    /// How many of `sizes` (record bytes of the queued batches, in order) fit now; the rest must be
    /// refused with the ``Refusal`` returned.
    ///
    /// The disk is measured at most once a second while there is room, and at every commit that might
    /// not fit. Before refusing, the WAL is checkpointed and truncated: the reserve is only real once it
    /// is, since copying the WAL into the main file needs the space its new pages take, and delivery must
    /// never face a WAL it cannot checkpoint. Once refusing, intake resumes only with a margin of a quarter
    /// of the reserve, so that a full disk reads as full to every writer rather than letting small
    /// requests slip through one by one.
    mutating func admit(_ sizes: [Int], connection: SQLiteConnection) -> Outcome {
        let cost = DiskHeadroom.stagingCost(recordBytes: sizes.reduce(0, +), pageSize: pageSize)
        let now = ContinuousClock.now
        var measurement: DiskHeadroom.Measurement?
        let margin = isRefusing ? reserveBytes / 4 : 0
        if cost + margin > stagingBudget || lastMeasurement.map({ now - $0 > .seconds(1) }) ?? true {
            measurement = remeasure(connection, at: now)
            if cost + margin > stagingBudget, let walBytes = measurement?.walBytes, walBytes > 0 {
                checkpoint(connection)
                measurement = remeasure(connection, at: now)
            }
        }
        var admitted = 0
        var bytes = 0
        while admitted < sizes.count,
            DiskHeadroom.stagingCost(recordBytes: bytes + sizes[admitted], pageSize: pageSize) <= stagingBudget - margin
        {
            bytes += sizes[admitted]
            admitted += 1
        }
        if admitted > 0 { stagingBudget -= DiskHeadroom.stagingCost(recordBytes: bytes, pageSize: pageSize) }
        guard admitted < sizes.count else {
            defer { isRefusing = false }
            return .all(resumed: isRefusing)
        }
        let refusal = Refusal(
            filesystemFree: measurement.map { ByteSize(bytes: $0.filesystemFree).approximate } ?? "little",
            reserve: measurement.map { ByteSize(bytes: headroom.reserve(filesystemSize: $0.filesystemSize)).approximate } ?? "the reserve")
        isRefusing = true
        return .part(count: admitted, refusal)
    }

    /// While refusing with nothing to commit (writers gave up, or wait for readiness): measures the disk
    /// again, at most once a second, and ends the refusal once a small request would be taken (with the
    /// margin ``admit(_:connection:)`` asks for). It ended only at the next write that fit, so a spool that
    /// delivery had emptied still read as full in `status`, `status --check` and `/readyz`. Returns whether
    /// the refusal ended.
    mutating func reconsider(_ connection: SQLiteConnection) -> Bool {
        guard isRefusing, lastMeasurement.map({ ContinuousClock.now - $0 >= .seconds(1) }) ?? true else { return false }
        guard remeasure(connection, at: .now) != nil,
            DiskHeadroom.stagingCost(recordBytes: pageSize, pageSize: pageSize) <= stagingBudget - reserveBytes / 4
        else { return false }
        isRefusing = false
        return true
    }

    /// While refusing, keeps the WAL small: delivery's bookkeeping has only the reserve to write in, and
    /// the automatic checkpoint would wait for 16 MiB of WAL. Checkpoints once the WAL holds a quarter of
    /// the reserve, or anything at all after 250 ms.
    mutating func relievePressure(_ connection: SQLiteConnection) {
        guard isRefusing else { return }
        let walBytes = DiskHeadroom.fileSize(walPath)
        guard walBytes > 0 else { return }
        let due = lastCheckpointAttempt.map { ContinuousClock.now - $0 > .milliseconds(250) } ?? true
        if due || walBytes >= max(16 * pageSize, reserveBytes / 4) { checkpoint(connection) }
    }

    /// Checkpoints the WAL into the main file and truncates it, handing its space back to the filesystem.
    /// A reader holding an old snapshot can make it partial; the next call finishes it.
    private mutating func checkpoint(_ connection: SQLiteConnection) {
        lastCheckpointAttempt = ContinuousClock.now
        // Readers hold their snapshots only briefly; do not let one stall the writer for long.
        do {
            try connection.execute("PRAGMA busy_timeout = 250; PRAGMA wal_checkpoint(TRUNCATE); \(SpoolDatabase.busyTimeout)")
        } catch {
            try? connection.execute(SpoolDatabase.busyTimeout)
        }
    }

    private mutating func remeasure(_ connection: SQLiteConnection, at now: ContinuousClock.Instant) -> DiskHeadroom.Measurement? {
        lastMeasurement = now
        guard let measurement = try? headroom.measure(connection) else {
            stagingBudget = .max / 2  // cannot tell: let the commit itself find out
            return nil
        }
        pageSize = measurement.pageSize
        reserveBytes = headroom.reserve(filesystemSize: measurement.filesystemSize)
        stagingBudget = headroom.admissibleStaging(measurement)
        return measurement
    }
}

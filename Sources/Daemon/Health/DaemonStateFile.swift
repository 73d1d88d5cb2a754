import Core
import FoundationEssentials
import Spool

#if canImport(Glibc)
    import Glibc
#endif

/// What the running daemon tells `status` beyond the spool: its process, since when it runs, and whether
/// intake is refused for want of room.
public struct DaemonState: Sendable, Equatable {
    public var pid: Int32
    /// The process's start in clock ticks since boot (`/proc/PID/stat`, field 22): with the pid, it tells
    /// this daemon from a process that got the same pid after it ended.
    public var processStart: UInt64
    public var startedAt: Date
    public var version: String
    /// A graceful shutdown has begun.
    public var stopping = false
    public var intakeRefusal: IntakeRefusal?
}

/// The daemon's state file, `<spool path>.daemon`, next to the spool: written by the daemon at start, when
/// intake refusal begins or ends, and when it begins to stop; read by `status`.
///
/// Why a file and not the spool's `counters` table: these are facts about a process, not about records.
/// They must not outlive it unnoticed (a spool keeps whatever was last written, and a daemon killed with
/// `kill -9` cannot clear it; the file names the process, and the reader checks that it still runs), and
/// writing one must not need a commit (intake may be refused precisely because the disk is full).
///
/// - Important: Written whole to a temporary file and renamed over, so a reader never sees half of it; with
///   the spool's access (``SpoolAccess``), so it says no more than the spool to whoever may not read that.
///   The file is padded to ``paddedBytes`` (spaces after the JSON): when a full disk has no block for the
///   temporary file, the state is written over the file in place, into the block it already has, so
///   `status` still learns that intake is refused (it read "delivering", and `--check` said ok, while every
///   writer got 507). A reader that finds half a state there reads again.
public enum DaemonStateFile {
    public static func path(forSpoolAt spool: String) -> String { spool + ".daemon" }

    /// The size the file is written at (at least): within one filesystem block, so that writing it over in
    /// place needs no new one.
    static let paddedBytes = 1024

    /// Writes `state` for the spool at `spoolPath`.
    public static func write(_ state: DaemonState, spoolPath: String, access: SpoolAccess) throws(SpoolError) {
        let path = path(forSpoolAt: spoolPath)
        let temporary = path + ".\(getpid()).tmp"
        var bytes = Array(encode(state).utf8)
        if bytes.count < paddedBytes { bytes += repeatElement(UInt8(ascii: " "), count: paddedBytes - bytes.count) }
        unlink(temporary)
        do {
            try access.create(temporary)
            try FileSystem.write(bytes, to: temporary)
        } catch {
            unlink(temporary)
            // A full disk: the file this daemon wrote at start has its block; the state goes there.
            if case let written = overwrite(path, with: bytes), written == 0 { return }
            throw SpoolError(.storage, path: spoolPath, "cannot write the daemon state file \(temporary): \(error)", cause: error)
        }
        guard rename(temporary, path) == 0 else {
            let error = SystemCallError()
            unlink(temporary)
            throw SpoolError(.storage, path: spoolPath, "cannot replace the daemon state file \(path): \(error)", cause: error)
        }
    }

    /// Writes `bytes` over the file at `path` from its start, in place (no new file, no truncation past them);
    /// returns 0, or the `errno` of the failure.
    private static func overwrite(_ path: String, with bytes: [UInt8]) -> Int32 {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return written == bytes.count ? 0 : (written < 0 ? errno : EIO)
    }

    /// The state the last daemon on this spool wrote, and whether that daemon still runs; `nil` when no
    /// daemon ever ran on it with this version (or the file cannot be read by this user).
    public static func read(spoolPath: String) -> (state: DaemonState, running: Bool)? {
        // Written over in place (a full disk), it may be caught half written: read again once.
        for attempt in 0..<2 {
            guard let data = try? FileSystem.contents(of: path(forSpoolAt: spoolPath)) else { return nil }
            if let state = decode(data) { return (state, processStart(pid: state.pid) == state.processStart) }
            if attempt == 0 { usleep(20_000) }
        }
        return nil
    }

    /// The start of process `pid` in clock ticks since boot, or `nil` when there is no such process.
    public static func processStart(pid: Int32) -> UInt64? {
        guard let bytes = try? FileSystem.contents(of: "/proc/\(pid)/stat"),
            case let stat = String(decoding: bytes, as: UTF8.self),
            let end = stat.lastIndex(of: ")")
        else { return nil }
        // After the command name (which may hold spaces and parentheses): field 3 onwards; 22 is the start.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    static func encode(_ state: DaemonState) -> String {
        let refusal =
            state.intakeRefusal.map { refusal in
                "{\"reason\":\"\(refusal.reason.rawValue)\",\"since\":\(refusal.since.timeIntervalSince1970),\"detail\":\(JSONCompactor.quote(refusal.detail))}"
            } ?? "null"
        return "{\"pid\":\(state.pid),\"process_start\":\(state.processStart),\"started_at\":\(state.startedAt.timeIntervalSince1970),"
            + "\"version\":\(JSONCompactor.quote(state.version)),\"stopping\":\(state.stopping),\"intake_refused\":\(refusal)}\n"
    }

    static func decode(_ data: [UInt8]) -> DaemonState? {
        guard let value = try? data.withUnsafeBytes({ try JSONValue.parse($0) }),
            case .number(let pid)? = value["pid"], let pidValue = Int32(pid),
            case .number(let start)? = value["process_start"], let startValue = UInt64(start),
            case .number(let startedAt)? = value["started_at"], let startedSeconds = Double(startedAt),
            case .string(let version)? = value["version"]
        else { return nil }
        var state = DaemonState(
            pid: pidValue, processStart: startValue, startedAt: Date(timeIntervalSince1970: startedSeconds), version: version)
        if case .bool(let stopping)? = value["stopping"] { state.stopping = stopping }
        if let refused = value["intake_refused"], case .string(let reasonText)? = refused["reason"],
            let reason = IntakeRefusal.Reason(rawValue: reasonText),
            case .number(let since)? = refused["since"], let sinceSeconds = Double(since),
            case .string(let detail)? = refused["detail"]
        {
            state.intakeRefusal = IntakeRefusal(reason: reason, since: Date(timeIntervalSince1970: sinceSeconds), detail: detail)
        }
        return state
    }
}

import Core
import FoundationEssentials

#if canImport(Glibc)
    import Glibc
#endif

/// Who may read the spool's files: every pending record and dead letter is in them.
///
/// - Important: The spool, its WAL and SHM files (and the daemon's state file beside them) are `0600`,
///   or `0640` with the group `[spool] group` names, whatever the umask. SQLite creates a new database
///   `0644` and gives the WAL and SHM files the mode of the database, so the database is created here,
///   before SQLite opens it. A spool made by an older version that others can read is tightened when the
///   daemon opens it (and the log says so); when that is impossible (another user owns the file) the
///   daemon refuses to start and says how to fix it.
public struct SpoolAccess: Sendable, Equatable {
    /// The group that may read the spool too; `nil`: the daemon's user only.
    public var group: gid_t?

    /// The daemon's user only: `0600`.
    public static let ownerOnly = SpoolAccess(group: nil)

    public init(group: gid_t?) {
        self.group = group
    }

    /// The access `[spool] group` asks for; the group must exist on this machine.
    public init(configuration: AgentConfiguration.Spool) throws(SpoolError) {
        guard let name = configuration.group else {
            self.init(group: nil)
            return
        }
        guard let gid = FileSystem.groupID(named: name) else {
            throw SpoolError(
                .cannotOpen, path: configuration.path,
                "[spool] group = \"\(name)\" is not a group on this machine (see getent group)")
        }
        self.init(group: gid)
    }

    /// Permission bits of every spool file.
    public var mode: mode_t { group == nil ? 0o600 : 0o640 }

    /// One file whose mode or group was set to the spool's, for the log.
    public struct Change: Sendable, Equatable {
        public var path: String
        public var oldMode: mode_t
        public var newMode: mode_t
        /// The group the file belonged to before, when it was given to `[spool] group`.
        public var oldGroup: gid_t?
    }

    /// The files SQLite keeps for the spool at `path`.
    package static func files(ofSpoolAt path: String) -> [String] {
        [path, path + "-wal", path + "-shm", path + "-journal"]
    }

    /// Gives the spool at `path` exactly ``mode`` and ``group``: creates the database file with them when
    /// it does not exist, and sets them on an existing one and its WAL, SHM and journal files (a spool an
    /// older version made `0644` is narrowed). Returns what was changed.
    ///
    /// - Throws: ``SpoolError`` saying what to run when a file cannot be created or changed.
    package func prepare(spoolAt path: String) throws(SpoolError) -> [Change] {
        try create(path)
        var changes: [Change] = []
        for file in Self.files(ofSpoolAt: path) {
            if let change = try apply(to: file, spool: path) { changes.append(change) }
        }
        return changes
    }

    /// Creates an empty file at `path` with ``mode`` and ``group`` (the umask cannot widen or narrow it);
    /// nothing when a file is there.
    package func create(_ path: String) throws(SpoolError) {
        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode)
        guard fd >= 0 else {
            if errno == EEXIST { return }
            let error = SystemCallError()
            throw SpoolError(.cannotOpen, path: path, "cannot create \(path): \(error)", cause: error)
        }
        defer { close(fd) }
        guard fchmod(fd, mode) == 0, group.map({ fchown(fd, uid_t.max, $0) == 0 }) ?? true else {
            let error = SystemCallError()
            unlink(path)
            throw SpoolError(
                .cannotOpen, path: path,
                group.map {
                    "cannot give \(path) to group \(Self.groupName($0)) (\(error)): the daemon's user must be a member of that group"
                } ?? "cannot set the mode of \(path) to \(Self.octal(mode)): \(error)", cause: error)
        }
    }

    /// Sets ``mode`` and ``group`` on one existing file; `nil` when it had them or does not exist.
    private func apply(to file: String, spool: String) throws(SpoolError) -> Change? {
        var info = stat()
        guard lstat(file, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        let current = info.st_mode & 0o777
        let regroup = group.flatMap { $0 == info.st_gid ? nil : $0 }
        guard current != mode || regroup != nil else { return nil }
        // The group first: chmod before chgrp would let the old group read for a moment.
        if let regroup, chown(file, uid_t.max, regroup) != 0 {
            throw refusal(file, spool: spool, mode: current, reason: SystemCallError(), owner: info.st_uid)
        }
        guard chmod(file, mode) == 0 else {
            throw refusal(file, spool: spool, mode: current, reason: SystemCallError(), owner: info.st_uid)
        }
        return Change(path: file, oldMode: current, newMode: mode, oldGroup: regroup.map { _ in info.st_gid })
    }

    private func refusal(_ file: String, spool: String, mode current: mode_t, reason: SystemCallError, owner: uid_t) -> SpoolError {
        let fix =
            group.map { "chgrp \(Self.groupName($0)) \(file) && chmod \(Self.octal(mode)) \(file)" } ?? "chmod \(Self.octal(mode)) \(file)"
        return SpoolError(
            .cannotOpen, path: spool,
            """
            \(file) \(current & ~mode != 0 ? "can be read by others" : "lacks the spool's access") (mode \(Self.octal(current))) \
            and this user (uid \(getuid())) cannot change that: \(reason) \
            (the file belongs to uid \(owner)). As its owner or root, run `\(fix)`, or `chown` the spool's files to the daemon's user; \
            then start again
            """, cause: reason)
    }

    package static func octal(_ mode: mode_t) -> String { "0" + String(mode, radix: 8) }

    package static func groupName(_ gid: gid_t) -> String {
        getgrgid(gid).flatMap { String(validatingCString: $0.pointee.gr_name) } ?? String(gid)
    }
}

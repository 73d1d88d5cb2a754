import Core
import Glibc

/// Keeps a second daemon off a spool: an exclusive `flock` on the spool file, held for the life of the
/// process (the kernel lets go of it when the process ends, however it ends).
///
/// Without it, a second `definite-agent run` on the same configuration (an operator's stray start, an
/// orchestrator's double start) resumed the running daemon's open batches and sent them before it failed
/// on the intake socket: requests the API got twice, or batches recorded delivered under the running
/// daemon's feet. The `dlq`, `queue` and `status` commands do not take it: they are safe beside the daemon.
///
/// `flock` locks are apart from SQLite's own (POSIX record locks): neither disturbs the other. But closing
/// any descriptor of the spool file releases the process's POSIX locks, SQLite's included, so the lock's
/// descriptor is never closed: it ends with the process.
package struct SpoolLock: Sendable {
    private let fd: Int32

    /// Takes the lock on the spool file at `path`; `nil` when there is nothing to lock yet (no file: the
    /// spool is about to be made, lock it after) or the file cannot be opened or locked (the spool's own
    /// open then says why, as it always has; a filesystem without `flock` runs without the lock). Throws,
    /// naming the holder's process, when another daemon holds it.
    ///
    /// A descriptor opened here is never closed, even on failure: this may run after SQLite opened the file
    /// (a new spool), and closing it would release SQLite's locks.
    package static func take(spoolPath path: String) throws(StartupError) -> SpoolLock? {
        var fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        if fd < 0, errno == EACCES || errno == EROFS { fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        guard fd >= 0 else { return nil }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            guard code == EWOULDBLOCK else { return nil }
            throw StartupError(
                .spoolInUse, part: "spool \(path)",
                "another definite-agent\(holder(of: path).map { " (pid \($0))" } ?? "") runs on this spool; stop it first, or give this one another [spool] path",
                errno: code)
        }
        return SpoolLock(fd: fd)
    }

    /// The process holding the `flock` on `path`, from `/proc/locks` (which names the file by its inode).
    private static func holder(of path: String) -> Int32? {
        var info = stat()
        guard stat(path, &info) == 0, let locks = try? FileSystem.text(of: "/proc/locks") else { return nil }
        let inode = ":\(info.st_ino)"
        for line in locks.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            guard fields.count >= 6, fields[1] == "FLOCK", fields[5].hasSuffix(inode) else { continue }
            return Int32(fields[4])
        }
        return nil
    }
}

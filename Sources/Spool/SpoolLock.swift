import Core
import Glibc

/// Keeps a second daemon off a spool: an exclusive `flock` on `<spool>.lock`, taken before the spool is
/// opened and held for as long as this value lives (the daemon's life; the kernel lets go of it when the
/// process ends, however it ends).
///
/// Without it, a second `definite-agent run` on the same configuration (an operator's stray start, an
/// orchestrator's double start) resumed the running daemon's open batches and sent them before it failed
/// on the intake socket: requests the API got twice, or batches recorded delivered under the running
/// daemon's feet. The `dlq`, `queue` and `status` commands do not take it: they are safe beside the daemon.
///
/// A separate file, not the spool: closing any descriptor of the spool file would release SQLite's own
/// locks on it.
package final class SpoolLock: Sendable {
    private let fd: Int32

    /// Takes the lock for the spool at `spoolPath` (creating its directory and the lock file if needed),
    /// and writes this process's id into the file; throws, naming the holder, if another process has it.
    package init(spoolPath: String) throws(StartupError) {
        let path = spoolPath + ".lock"
        let part = "spool \(spoolPath)"
        let directory = FileSystem.parentDirectory(of: path)
        if !directory.isEmpty, !FileSystem.exists(directory) {
            do {
                try FileSystem.createDirectories(directory, mode: 0o750)
            } catch {
                throw StartupError(.pathUnusable, part: part, "cannot create its directory \(directory): \(error)", cause: error)
            }
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw StartupError.systemCall(.pathUnusable, part: part, "cannot open its lock file \(path)", errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            let holder = (try? FileSystem.contents(of: path)).flatMap { String(decoding: $0, as: UTF8.self).split(separator: "\n").first }
            close(fd)
            guard code == EWOULDBLOCK else {
                throw StartupError.systemCall(.pathUnusable, part: part, "cannot lock \(path)", errno: code)
            }
            throw StartupError(
                .spoolInUse, part: part,
                "another definite-agent\(holder.map { " (pid \($0))" } ?? "") runs on this spool; stop it first, or give this one another [spool] path",
                errno: code)
        }
        ftruncate(fd, 0)
        try? FileSystem.write(Array("\(getpid())\n".utf8), to: fd)
        self.fd = fd
    }

    deinit {
        close(fd)
    }
}

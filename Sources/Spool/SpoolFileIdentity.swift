import Core
import Glibc

/// Which file a spool path named when the spool was opened (device and inode), to notice when the path no
/// longer names it: the file was removed (`rm spool.db*`) or replaced (a restore, another file moved
/// over it). A process keeps writing to a removed file it holds open, with no error.
struct SpoolFileIdentity: Sendable {
    let path: String
    private let device: UInt64
    private let inode: UInt64

    /// The identity of the file at `path` now; `nil` when it cannot be looked at.
    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.path = path
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
    }

    /// How the path changed since: "removed", "replaced by another file", or `nil` while it names the same
    /// file. (A `stat` per call: the writer calls it once per commit of records.)
    func change() -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return errno == ENOENT ? "removed" : nil }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode ? nil : "replaced by another file"
    }
}

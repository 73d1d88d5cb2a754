import Glibc
import SystemPackage

/// A system call that failed: its `errno`, described as the system describes it ("No such file or
/// directory"), which is what error messages quote.
package struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The error number, as swift-system names it (`.noSuchFileOrDirectory`, …).
    package var errno: Errno
    /// Said instead of the system's text, when the number alone would mislead.
    package var detail: String?

    /// The error of the last failed call (`errno`), or `code`.
    package init(_ code: Int32 = Glibc.errno, detail: String? = nil) {
        errno = Errno(rawValue: code)
        self.detail = detail
    }

    /// The raw `errno` value.
    package var code: Int32 { errno.rawValue }

    package var description: String { detail ?? errno.description }
}

/// The few file operations the daemon and its commands need, on the system calls themselves (the
/// binary links no Foundation): their errors carry `errno`.
package enum FileSystem {
    /// `path` without empty and `.` components (`/run//a/./b.sock` is `/run/a/b.sock`), as the kernel reads
    /// it; `..` is kept (what it leads to depends on symbolic links).
    package static func lexicallyNormal(_ path: String) -> String {
        let components = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        return (path.hasPrefix("/") ? "/" : "") + components.joined(separator: "/")
    }

    /// The group id a `[spool] group` value names: a group name, or a numeric id; `nil` if there is none.
    package static func groupID(named name: String) -> gid_t? {
        if let id = gid_t(name), getgrgid(id) != nil { return id }
        return getgrnam(name).map { $0.pointee.gr_gid }
    }

    /// The whole file at `path`, which must be a regular file: a FIFO, a device or a socket (a mistyped
    /// path, a secret mount gone wrong) would block the read for ever, or never end it. A file of more than
    /// `maxBytes` is refused (`EFBIG`) before it is read: a wrong file named as a secret (a disk image, a
    /// log) once took gigabytes of memory and many seconds to be found too large.
    package static func contents(of path: String, maxBytes: Int = .max) throws(SystemCallError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw SystemCallError() }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError() }
        try requireRegularFile(mode: info.st_mode)
        let tooLarge = { (size: Int) in SystemCallError(EFBIG, detail: "the file holds \(size) bytes, more than the \(maxBytes) taken") }
        if info.st_size > maxBytes { throw tooLarge(Int(info.st_size)) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count == 0 { return bytes }
            if count < 0 {
                if errno == EINTR { continue }
                throw SystemCallError()
            }
            bytes.append(contentsOf: chunk[..<count])
            // It may grow while it is read.
            if bytes.count > maxBytes { throw tooLarge(bytes.count) }
        }
    }

    /// Throws unless the open descriptor `fd` is a regular file.
    package static func requireRegularFile(_ fd: Int32) throws(SystemCallError) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError() }
        try requireRegularFile(mode: info.st_mode)
    }

    /// Throws unless `mode` (a `stat`'s `st_mode`) is a regular file's, saying what it is instead.
    package static func requireRegularFile(mode: mode_t) throws(SystemCallError) {
        let kind = mode & S_IFMT
        guard kind == S_IFREG else {
            let what = kind == S_IFDIR ? "a directory" : kind == S_IFIFO ? "a FIFO" : kind == S_IFSOCK ? "a socket" : "a device"
            throw SystemCallError(EINVAL, detail: "it is \(what), not a regular file")
        }
    }

    /// The file at `path` as text; `nil` when it is not valid UTF-8.
    package static func text(of path: String) throws(SystemCallError) -> String? {
        String(validating: try contents(of: path), as: UTF8.self)
    }

    /// Writes `bytes` to the file at `path`, replacing what it held (created with `mode` if missing).
    package static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(SystemCallError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCallError() }
        defer { close(fd) }
        try write(bytes, to: fd)
    }

    /// Writes all of `bytes` to the descriptor `fd` (retrying short writes and interruptions).
    package static func write(_ bytes: [UInt8], to fd: Int32) throws(SystemCallError) {
        let failure: Int32? = bytes.withUnsafeBytes { buffer in
            var written = 0
            while written < buffer.count {
                let count = Glibc.write(fd, buffer.baseAddress! + written, buffer.count - written)
                if count < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                written += count
            }
            return nil
        }
        if let failure { throw SystemCallError(failure) }
    }

    /// Whether something (a file, a directory, a socket) is at `path`; a dangling symbolic link is not.
    package static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// Whether `path` is a directory (or a symbolic link to one).
    package static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    /// Creates the directory at `path` and any missing parents, each with `mode` (less the umask); a
    /// directory already there is fine.
    package static func createDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemCallError) {
        if isDirectory(path) { return }
        let parent = parentDirectory(of: path)
        if !parent.isEmpty, parent != path { try createDirectories(parent, mode: mode) }
        guard mkdir(path, mode) == 0 || (errno == EEXIST && isDirectory(path)) else { throw SystemCallError() }
    }

    /// The directory part of `path`, as `dirname` but `""` for a bare name: `/a/b` → `/a`, `/a` → `/`,
    /// `a` → `""`; trailing slashes are ignored.
    package static func parentDirectory(of path: String) -> String {
        FilePath(path).removingLastComponent().string
    }

    /// The last component of `path`: `/a/b.db` → `b.db`.
    package static func lastComponent(of path: String) -> String {
        let file = FilePath(path)
        return file.lastComponent?.string ?? file.string
    }
}

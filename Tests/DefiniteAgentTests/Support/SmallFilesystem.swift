import Foundation
import Glibc

/// A small tmpfs the test mounts (as root) to run a disk out of space for real.
struct SmallFilesystem {
    let path: String

    /// Mounts a tmpfs of `size` (e.g. "2m") at `path`; `nil` when it cannot (not root, no tmpfs).
    init?(at path: String, size: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard Self.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path]) == 0 else { return nil }
        self.path = path
    }

    func unmount() {
        _ = Self.run("/bin/umount", ["-l", path])
    }

    /// Fills what is left of it with a file of its own (another program filling the disk); returns its path.
    @discardableResult
    func fill() -> String {
        let filler = path + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
        let chunk = [UInt8](repeating: 7, count: 4096)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == chunk.count {}
        close(fd)
        return filler
    }

    private static func run(_ executable: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

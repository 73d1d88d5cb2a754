import Foundation
import Glibc

/// The directory that holds this test process's temporary directories, removed when the process exits:
/// a test run leaves nothing behind in the system's temporary directory (a crashed run leaves this one).
let testRunDirectory: String = {
    let path = NSTemporaryDirectory() + "definite-agent-tests-\(getpid())"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: testRunDirectory) }
    return path
}()

/// A new, empty directory for one test, inside ``testRunDirectory``.
func makeTemporaryDirectory(_ prefix: String) throws -> String {
    let directory = testRunDirectory + "/\(prefix)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    return directory
}

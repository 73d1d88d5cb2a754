import Foundation

/// A new, empty directory under the system's temporary directory, for one test.
func makeTemporaryDirectory(_ prefix: String) throws -> String {
    let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    return directory
}

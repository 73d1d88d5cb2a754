import Foundation
import Synchronization

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC), for every interval the bench measures.
enum Monotonic {
    static func nanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func seconds(since start: UInt64) -> Double { Double(nanos() - start) / 1e9 }

    /// Sleeps until the monotonic clock reads `deadline` (absolute, so pacing does not drift).
    static func sleep(until deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
}

/// Runs `body(i)` for `i` in `0..<count`, each on its own thread (not a GCD pool: 64 clients must really
/// run at the same time, also on 2 cores), and returns the results in order.
func onThreads<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) -> [Result<T, any Error>] {
    let results = Mutex<[Result<T, any Error>?]>(Array(repeating: nil, count: count))
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let thread = Thread {
            let outcome = Result { try body(i) }
            results.withLock { $0[i] = outcome }
            group.leave()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    group.wait()
    return results.withLock { $0.map { $0! } }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A fresh directory under $TMPDIR, removed by `remove()`.
final class TemporaryDirectory {
    let path: String

    init(_ label: String) throws {
        path = NSTemporaryDirectory() + "dab-\(getpid())-\(label)-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Reads one `Vm…:` line (in KiB) of /proc/<pid>/status; 0 when the process is gone.
func procStatusKiB(pid: Int32, field: String) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc/<pid>/stat; 0 when gone.
func procCPUSeconds(pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return 0 }
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Number formatting for the table.
enum Format {
    /// 1234567.8 → "1,234,568".
    static func grouped(_ value: Double) -> String {
        guard value.isFinite else { return "–" }
        let digits = String(Int(value.rounded()).magnitude)
        var out = ""
        for (i, ch) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(ch)
        }
        return (value < 0 ? "-" : "") + out
    }

    static func grouped(_ value: Int) -> String { grouped(Double(value)) }

    static func mib(kib: Int) -> String { String(format: "%.1f MiB", Double(kib) / 1024) }

    static func bytes(_ count: Int) -> String {
        count >= 1 << 20
            ? String(format: "%.1f MiB", Double(count) / 1_048_576)
            : String(format: "%.1f KiB", Double(count) / 1024)
    }

    static func ms(nanos: UInt64) -> String { String(format: "%.2f ms", Double(nanos) / 1e6) }

    static func fixed(_ value: Double, _ decimals: Int) -> String { String(format: "%.\(decimals)f", value) }
}

/// Progress lines on stderr while the table is being gathered.
func progress(_ message: String) {
    FileHandle.standardError.write(Data("» \(message)\n".utf8))
}

import Foundation

/// A child process started with `posix_spawn` and reaped with `wait4`, whose rusage gives the CPU time it
/// used in all (user + system, every thread) even after it has exited, when `/proc/<pid>/stat` is gone.
/// Its standard output and error go to files.
final class Child {
    let pid: pid_t
    let stdoutPath: String
    private var reaped: (status: Int32, cpuSeconds: Double)?

    init(_ arguments: [String], stdout: String, stderr: String) throws {
        stdoutPath = stdout
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard rc == 0 else { throw BenchError("cannot start \(arguments[0]): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Waits for the child to exit: its exit status (128 + signal when killed) and CPU seconds.
    @discardableResult
    func wait() -> (status: Int32, cpuSeconds: Double) {
        while reaped == nil { reap(options: 0) }
        return reaped!
    }

    /// Whether the child has not exited yet.
    var isRunning: Bool {
        if reaped == nil { reap(options: WNOHANG) }
        return reaped == nil
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace` seconds.
    func terminate(grace: Double) {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let start = Monotonic.nanos()
        while isRunning, Monotonic.seconds(since: start) < grace { usleep(20_000) }
        if isRunning { kill(pid, SIGKILL) }
        wait()
    }

    private func reap(options: Int32) {
        var status: Int32 = 0
        var usage = rusage()
        let rc = wait4(pid, &status, options, &usage)
        guard rc == pid else { return }
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        let exit = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + status & 0x7F
        reaped = (exit, seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }

    /// What the child wrote to its standard output.
    var output: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
}

import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Daemon state file and status report")
struct DaemonStateTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("daemon-state")
    }

    func state(pid: Int32 = getpid()) -> DaemonState {
        DaemonState(
            pid: pid, processStart: DaemonStateFile.processStart(pid: pid) ?? 1, startedAt: Date(timeIntervalSince1970: 1_700_000_000.25),
            version: "0.1.0", stopping: false,
            intakeRefusal: IntakeRefusal(
                reason: .diskReserve, since: Date(timeIntervalSince1970: 1_700_000_100), detail: "2 MiB free \"quoted\""))
    }

    @Test func theStateFileRoundTripsAndTellsARunningDaemonFromAGoneOne() throws {
        let spool = directory + "/spool.db"
        try DaemonStateFile.write(state(), spoolPath: spool, access: .ownerOnly)
        let read = try #require(DaemonStateFile.read(spoolPath: spool))
        #expect(read.state == state() && read.running)
        var mode = stat()
        stat(DaemonStateFile.path(forSpoolAt: spool), &mode)
        #expect(mode.st_mode & 0o777 == 0o600)
        // The same pid with another start time: a process that got the pid after the daemon ended.
        var reused = state()
        reused.processStart += 1
        try DaemonStateFile.write(reused, spoolPath: spool, access: .ownerOnly)
        #expect(DaemonStateFile.read(spoolPath: spool)?.running == false)
        #expect(DaemonStateFile.read(spoolPath: directory + "/other.db") == nil)
    }

    /// On a full disk the temporary file could not be written: `status` kept the state from before the
    /// refusal ("delivering", `--check` ok) while every writer got 507. The state goes over the file in place.
    @Test(.enabled(if: getuid() == 0, "mounts a small tmpfs")) func theStateIsWrittenOnAFullDiskToo() throws {
        guard let small = try SmallFilesystem(at: directory + "/full", size: "1m") else {
            Issue.record("could not mount a tmpfs")
            return
        }
        defer { small.unmount() }
        let spool = small.path + "/spool.db"
        try DaemonStateFile.write(state(), spoolPath: spool, access: .ownerOnly)
        small.fill()
        var refused = state()
        refused.intakeRefusal = IntakeRefusal(reason: .diskReserve, since: Date(timeIntervalSince1970: 1_700_000_000), detail: "0 B free")
        try DaemonStateFile.write(refused, spoolPath: spool, access: .ownerOnly)
        #expect(DaemonStateFile.read(spoolPath: spool)?.state == refused)
        #expect(!FileManager.default.fileExists(atPath: DaemonStateFile.path(forSpoolAt: spool) + ".\(getpid()).tmp"))
    }

    func target(_ table: String, pending: Int, age: Double?, state: String? = nil, until: Double? = nil) -> SpoolStatus.Target {
        SpoolStatus.Target(
            table: table, mode: .append, primaryKey: "", tags: "", pending: pending, pendingBytes: pending * 10,
            oldestAgeSeconds: age, deadLetters: 0, lastError: nil, state: state, lastSuccessAt: nil, stateUntil: until)
    }

    @Test func checkFindsADownDaemonHeldTablesRefusalsAndOldRows() {
        let now = Date()
        let status = SpoolStatus(targets: [
            target("bronze.a", pending: 5, age: 700),
            target("bronze.b", pending: 2, age: 3, state: "held: table not found", until: now.timeIntervalSince1970 + 60),
            target("bronze.c", pending: 1, age: 1, state: "backing off", until: now.timeIntervalSince1970 + 5),
        ])
        var running = state()
        running.intakeRefusal = nil
        let healthy = StatusReport(
            status: SpoolStatus(targets: [target("bronze.a", pending: 5, age: 2)]), daemon: (running, true), now: now)
        #expect(healthy.problems(maxAge: HumanDuration(parsing: "10m")).isEmpty)
        let report = StatusReport(status: status, daemon: (state(), true), now: now)
        #expect(
            report.problems(maxAge: HumanDuration(parsing: "10m")) == [
                "intake refused: disk full (2 MiB free \"quoted\")", "bronze.b: held: table not found",
                "the oldest pending row of bronze.a is 11m 40s old (over 10m)",
            ])
        let down = StatusReport(status: SpoolStatus(targets: []), daemon: (state(), false), now: now)
        #expect(down.problems(maxAge: nil).count == 1 && down.problems(maxAge: nil)[0].hasPrefix("daemon not running"))
        #expect(down.intakeRefusal == nil, "a stopped daemon refuses nothing")
        #expect(StatusReport(status: SpoolStatus(targets: []), daemon: nil, now: now).problems(maxAge: nil).count == 1)
    }

    /// Issue 17: "auth failing until <a time already past>" said the opposite of what happens: the next try is due.
    @Test func aStateEndTimeAlreadyPastIsNotShown() {
        let now = Date()
        let past = target("bronze.a", pending: 1, age: 1, state: "auth failing", until: now.timeIntervalSince1970 - 30)
        let future = target("bronze.b", pending: 1, age: 1, state: "auth failing", until: now.timeIntervalSince1970 + 30)
        let report = StatusReport(status: SpoolStatus(targets: [past, future]), daemon: (state(), true), now: now)
        #expect(report.stateUntil(past) == nil && report.stateUntil(future) != nil)
        let text = report.table(spool: "/x")
        #expect(text.components(separatedBy: " until ").count == 2)
        #expect(report.json(problems: nil).contains("\"state_until\":null"))
        // With no daemon running, nothing ends at any time.
        let stopped = StatusReport(status: SpoolStatus(targets: [past, future]), daemon: (state(), false), now: now)
        #expect(stopped.stateUntil(future) == nil && !stopped.table(spool: "/x").contains(" until "))
    }

    /// A table written to a row at a time is held between its rows, with none pending: `--check` said ok
    /// there (and flagged it only while the next row waited).
    @Test func aHoldWithNothingPendingCountsWhileItLasts() {
        let now = Date()
        let held = target("bronze.a", pending: 0, age: nil, state: "held: the API refuses every row", until: now.timeIntervalSince1970 + 30)
        let over = target("bronze.b", pending: 0, age: nil, state: "held: the API refuses every row", until: now.timeIntervalSince1970 - 30)
        let running = StatusReport(status: SpoolStatus(targets: [held, over]), daemon: (state(), true), now: now)
        #expect(running.problems(maxAge: nil).filter { $0.hasPrefix("bronze.") } == ["bronze.a: held: the API refuses every row"])
        #expect([held, over].map(running.shownState) == ["held: the API refuses every row", "idle"])
        #expect(running.stateUntil(held) != nil && running.stateUntil(over) == nil)
        let stopped = StatusReport(status: SpoolStatus(targets: [held, over]), daemon: (state(), false), now: now)
        #expect(stopped.problems(maxAge: nil).count == 1 && [held, over].map(stopped.shownState) == ["idle", "idle"])
    }

    /// After a stop the spool keeps the state the last daemon recorded: "delivering" or "backing off" beside
    /// "daemon: not running" read as if something still moved the rows. Holds stay: they are still the news.
    @Test func aStoppedDaemonsRowsReadQueuedAndItsHoldsStay() {
        let now = Date()
        let backingOff = target("bronze.a", pending: 3, age: 1, state: "backing off", until: now.timeIntervalSince1970 + 30)
        let delivering = target("bronze.b", pending: 1, age: 1)
        let held = target("bronze.c", pending: 2, age: 1, state: "held: table not found", until: now.timeIntervalSince1970 + 30)
        let empty = target("bronze.d", pending: 0, age: nil)
        let targets = [backingOff, delivering, held, empty]
        for daemon in [(state(), false), nil] as [(DaemonState, Bool)?] {
            let stopped = StatusReport(status: SpoolStatus(targets: targets), daemon: daemon, now: now)
            #expect(targets.map(stopped.shownState) == ["queued", "queued", "held: table not found", "idle"])
        }
        let running = StatusReport(status: SpoolStatus(targets: targets), daemon: (state(), true), now: now)
        #expect(targets.map(running.shownState) == ["backing off", "delivering", "held: table not found", "idle"])
    }

    /// A proxy's HTML page as the last error broke the table's one row per table.
    @Test func aLastErrorOfManyLinesTakesOneRowOfTheTable() {
        var t = target("bronze.a", pending: 1, age: 1)
        t.lastError = "502 Bad Gateway:\n<html>\r\n\t<body>down</body>\n</html>"
        let report = StatusReport(status: SpoolStatus(targets: [t]), daemon: nil, now: Date())
        let table = report.table(spool: "/x").split(separator: "\n")
        #expect(table.last?.hasSuffix("502 Bad Gateway: <html> <body>down</body> </html>") == true, "\(table)")
        #expect(table.filter { $0.hasPrefix("bronze.a") }.count == 1 && !table.contains { $0.hasPrefix("<") })
        #expect(report.json(problems: nil).contains(#"502 Bad Gateway:\n<html>"#), "JSON keeps the text")
    }

    @Test func durationsReadAsOperatorsWriteThem() {
        #expect(StatusReport.duration(45.9) == "45s")
        #expect(StatusReport.duration(725) == "12m 05s")
        #expect(StatusReport.duration(3 * 3600 + 300) == "3h 05m")
        #expect(StatusReport.duration(2 * 86_400 + 4 * 3600) == "2d 04h")
    }
}

import ArgumentParser
import Core
import Daemon
import FoundationEssentials
import Glibc
import Spool

/// `definite-agent status`: whether the daemon runs, whether it takes records, and what is queued per
/// target, read from the spool file and the daemon's state file beside it (``DaemonStateFile``).
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show whether the daemon runs and what the spool holds, per target table (works whether or not the daemon runs).",
        discussion: """
            With --check, prints one line, "ok: …" or "unhealthy: …", and exits 1 when the daemon is not running, \
            intake is refused (spool or disk full), a table is held (table not found) or delivery is failing \
            (auth failing), or, with --max-age, the oldest pending row is older than that: a health probe for \
            cron and monitoring.
            """)

    @OptionGroup var global: GlobalOptions

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(name: .long, help: "Exit 1 when something needs attention (see below), with a one-line verdict.")
    var check = false

    @Option(
        name: .long,
        help: ArgumentHelp("With --check: unhealthy when the oldest pending row is older than this, e.g. \"10m\".", valueName: "duration"))
    var maxAge: String?

    func validate() throws {
        if let maxAge {
            guard check else { throw ValidationError("--max-age goes with --check") }
            if case .failure(let failure) = HumanDuration.parse(maxAge) {
                throw ValidationError("--max-age \(failure.explanation(maxAge))")
            }
        }
    }

    func run() async throws {
        let (configuration, _) = try global.loadConfiguration()
        let path = configuration.spool.path
        let daemon = DaemonStateFile.read(spoolPath: path)
        let status: SpoolStatus
        do {
            status = try SpoolStatus.read(path: path)
        } catch  where error.code == .missing {
            guard check else {
                printError("error: \(removedUnderADaemon(error) ?? error.description)")
                throw ExitCode(SpoolError.exitCode)
            }
            let problem = removedUnderADaemon(error) ?? "the daemon never ran on \(path) (no spool file)"
            print(json ? "{\"healthy\":false,\"problems\":[\(JSONCompactor.quote(problem))]}" : "unhealthy: \(problem)")
            throw ExitCode(1)
        } catch {
            printError("error: \(error)")
            throw ExitCode(SpoolError.exitCode)
        }
        let report = StatusReport(status: status, daemon: daemon, now: Date())
        let problems = check ? report.problems(maxAge: maxAge.flatMap(HumanDuration.init(parsing:))) : []
        if json {
            print(report.json(problems: check ? problems : nil))
        } else if check {
            print(problems.isEmpty ? "ok: \(report.summary)" : "unhealthy: \(problems.joined(separator: "; "))")
        } else {
            print(report.table(spool: path))
        }
        if !problems.isEmpty { throw ExitCode(1) }
    }
}

/// What `status` shows, from the spool and the daemon's state file: the text, the JSON and the health
/// verdict of `--check` all come from here.
struct StatusReport {
    let status: SpoolStatus
    /// The daemon's state file, and whether the daemon that wrote it still runs.
    let daemon: (state: DaemonState, running: Bool)?
    let now: Date

    var isRunning: Bool { daemon?.running == true }

    /// Intake refusal, as the running daemon reported it (a stopped daemon refuses nothing).
    var intakeRefusal: IntakeRefusal? { isRunning ? daemon?.state.intakeRefusal : nil }

    /// "running (pid 4242, up 3h 05m)", "stopping (pid 4242)", "not running".
    var daemonLine: String {
        guard let daemon else { return "not running (no daemon has run on this spool with this version)" }
        guard daemon.running else {
            return "not running (last ran as pid \(daemon.state.pid), started \(Self.timestamp(daemon.state.startedAt)))"
        }
        if daemon.state.stopping { return "stopping (pid \(daemon.state.pid))" }
        return
            "running (pid \(daemon.state.pid), up \(Self.duration(now.timeIntervalSince(daemon.state.startedAt))), version \(daemon.state.version))"
    }

    /// One line for `--check`'s "ok:".
    var summary: String {
        var line = "daemon \(daemonLine), \(status.pending) pending"
        if let oldest = status.targets.compactMap(\.oldestAgeSeconds).max() { line += ", oldest \(Self.duration(oldest))" }
        return line + ", \(status.deadLetters) dead letters"
    }

    /// What needs attention: the daemon down or stopping, intake refused, a target held or failing, rows
    /// older than `maxAge`.
    func problems(maxAge: HumanDuration?) -> [String] {
        var problems: [String] = []
        if !isRunning {
            problems.append("daemon \(daemonLine)")
        } else if daemon?.state.stopping == true {
            problems.append("daemon stopping")
        }
        if let refusal = intakeRefusal { problems.append("intake refused: \(refusal.summary)") }
        for target in status.targets where isHolding(target) {
            problems.append("\(target.table): \(target.deliveryState?.kind.rawValue ?? "")")
        }
        if let maxAge,
            let oldest = status.targets.filter({ ($0.oldestAgeSeconds ?? 0) > maxAge.seconds })
                .max(by: { ($0.oldestAgeSeconds ?? 0) < ($1.oldestAgeSeconds ?? 0) })
        {
            problems.append(
                "the oldest pending row of \(oldest.table) is \(Self.duration(oldest.oldestAgeSeconds ?? 0)) old (over \(maxAge))")
        }
        return problems
    }

    /// The target's ``TargetState/Kind`` as operators read it: "idle", "delivering", "backing off",
    /// "isolating bad rows", "held: table not found" or "auth failing"; with no daemon running, "queued"
    /// for rows that wait for one (the spool keeps the state the last daemon recorded: "delivering" after
    /// a stop read as if something still moved them), or the hold it recorded.
    func shownState(_ t: SpoolStatus.Target) -> String {
        if isHolding(t), let state = t.deliveryState { return state.kind.rawValue }
        guard t.pending > 0 else { return TargetState.Kind.idle.rawValue }
        if let state = t.deliveryState, isRunning || state.isHeld { return state.kind.rawValue }
        return isRunning ? TargetState.Kind.delivering.rawValue : "queued"
    }

    /// Whether the target is held (table not found, refusing every row, auth failing): while rows wait, or,
    /// with the daemon running, until the hold ends even with none waiting (a table written to a row at a
    /// time is held between its rows, and the next one will wait).
    func isHolding(_ t: SpoolStatus.Target) -> Bool {
        guard let state = t.deliveryState, state.isHeld else { return false }
        return t.pending > 0 || (isRunning && (t.stateUntil ?? 0) > now.timeIntervalSince1970)
    }

    /// When the target's state ends by itself, if that is still to come (a time already past means the
    /// next attempt is due or under way, so it is not shown); nothing ends while no daemon runs.
    func stateUntil(_ t: SpoolStatus.Target) -> Double? {
        guard isRunning, t.pending > 0 || isHolding(t), let until = t.stateUntil, until > now.timeIntervalSince1970 else { return nil }
        return until
    }

    func json(problems: [String]?) -> String {
        func number(_ value: Double?) -> String {
            guard let value else { return "null" }
            return value.fixed(3)
        }
        func time(_ seconds: Double?) -> String { seconds.map { "\"\(Self.timestamp(Date(timeIntervalSince1970: $0)))\"" } ?? "null" }
        let tables = status.targets.map { t in
            var fields = [
                "\"table\":\(JSONCompactor.quote(t.table))",
                "\"mode\":\(JSONCompactor.quote(t.mode.rawValue))",
            ]
            if !t.primaryKey.isEmpty { fields.append("\"primary_key\":[\(JSONCompactor.quote(t.primaryKey))]") }
            if !t.tags.isEmpty { fields.append("\"tags\":\(t.tags)") }
            fields += [
                "\"pending\":\(t.pending)",
                "\"pending_bytes\":\(t.pendingBytes)",
                "\"oldest_age_s\":\(number(t.oldestAgeSeconds))",
                "\"dead_letters\":\(t.deadLetters)",
                "\"state\":\(JSONCompactor.quote(shownState(t)))",
                "\"state_until\":\(time(stateUntil(t)))",
                "\"last_success\":\(time(t.lastSuccessAt))",
                "\"last_error\":\(t.lastError.map(JSONCompactor.quote) ?? "null")",
            ]
            return "{" + fields.joined(separator: ",") + "}"
        }
        let datagrams =
            "{\"received\":\(status.datagrams.received),\"rejected\":\(status.datagrams.rejected),\"dropped\":\(status.datagrams.dropped)}"
        let state = daemon?.state
        let daemonJSON =
            "{\"running\":\(isRunning),\"pid\":\(state.map { String($0.pid) } ?? "null"),"
            + "\"started_at\":\(time(state?.startedAt.timeIntervalSince1970)),"
            + "\"uptime_s\":\(number(isRunning ? state.map { now.timeIntervalSince($0.startedAt) } : nil)),"
            + "\"stopping\":\(isRunning && state?.stopping == true)}"
        let refused =
            intakeRefusal.map {
                "{\"reason\":\"\($0.reason.rawValue)\",\"since\":\(time($0.since.timeIntervalSince1970)),\"detail\":\(JSONCompactor.quote($0.detail))}"
            } ?? "null"
        var fields =
            "\"daemon\":\(daemonJSON),\"intake_refused\":\(refused),"
            + "\"pending\":\(status.pending),\"pending_bytes\":\(status.pendingBytes),\"dead_letters\":\(status.deadLetters),"
            + "\"datagrams\":\(datagrams),\"tables\":[\(tables.joined(separator: ","))]"
        if let problems {
            fields += ",\"healthy\":\(problems.isEmpty),\"problems\":[\(problems.map(JSONCompactor.quote).joined(separator: ","))]"
        }
        return "{" + fields + "}"
    }

    func table(spool: String) -> String {
        var out = "daemon: \(daemonLine)\n"
        if let refusal = intakeRefusal {
            out += "intake refused: \(refusal.summary), since \(Self.timestamp(refusal.since)); requests that do not fit get 507\n"
        }
        out += "spool \(spool): \(status.pending) pending (\(ByteSize(bytes: status.pendingBytes))), \(status.deadLetters) dead letters\n"
        if status.datagrams.received > 0 {
            out +=
                "datagrams: \(status.datagrams.received) received, \(status.datagrams.rejected) rejected, \(status.datagrams.dropped) dropped\n"
        }
        guard !status.targets.isEmpty else { return out + "no targets yet" }
        let header = ["TABLE", "MODE", "PENDING", "BYTES", "OLDEST", "DEAD", "STATE", "LAST SUCCESS", "LAST ERROR"]
        let rows = status.targets.map { t -> [String] in
            var mode = t.mode.rawValue
            if !t.primaryKey.isEmpty { mode += "(\(t.primaryKey))" }
            var table = t.table
            if !t.tags.isEmpty { table += " \(t.tags)" }
            return [
                table, mode, "\(t.pending)", ByteSize(bytes: t.pendingBytes).description,
                t.oldestAgeSeconds.map { $0.fixed(1) + "s" } ?? "-", "\(t.deadLetters)",
                shownState(t) + (stateUntil(t).map { " until \(Self.timestamp(Date(timeIntervalSince1970: $0)))" } ?? ""),
                t.lastSuccessAt.map { Self.timestamp(Date(timeIntervalSince1970: $0)) } ?? "-", t.lastError.map(Self.oneLine) ?? "-",
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        let render: ([String]) -> String = { cells in
            cells.enumerated().map { $0.element.padded(to: widths[$0.offset]) }
                .joined(separator: "  ").trimmingWhitespace()
        }
        return out + ([header] + rows).map(render).joined(separator: "\n")
    }

    static func timestamp(_ date: Date) -> String {
        DeadLetterCommand.timestamp(date)
    }

    /// `text` on one line of the table: line breaks, tabs and other control characters (a proxy's HTML
    /// page as the last error) become spaces, runs of them one. `--json` keeps the text as it is.
    static func oneLine(_ text: String) -> String {
        var out = ""
        var lastWasSpace = false
        for scalar in text.unicodeScalars {
            let space = scalar.value < 0x20 || scalar.value == 0x7F || scalar == " "
            if space, lastWasSpace { continue }
            out.unicodeScalars.append(space ? " " : scalar)
            lastWasSpace = space
        }
        return out.trimmingWhitespace()
    }

    /// "45s", "12m 05s", "3h 05m", "2d 04h".
    static func duration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded(.down))
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        switch total {
        case ..<60: return "\(total)s"
        case ..<3600: return "\(total / 60)m \(two(total % 60))s"
        case ..<86_400: return "\(total / 3600)h \(two(total % 3600 / 60))m"
        default: return "\(total / 86_400)d \(two(total % 86_400 / 3600))h"
        }
    }
}

import ArgumentParser
import Foundation

/// `definite-agent status`: what is queued, per target, read from the spool file.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show what the spool holds, per target table (works whether or not the daemon runs).")

    @OptionGroup var global: GlobalOptions

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    func run() async throws {
        let (configuration, _) = try global.loadConfiguration()
        let status = try await reportingErrors { try SpoolStatus.read(path: configuration.spool.path) }
        print(json ? Self.json(status) : Self.table(status, spool: configuration.spool.path))
    }

    static func json(_ status: SpoolStatus) -> String {
        func number(_ value: Double?) -> String {
            guard let value else { return "null" }
            return String(format: "%.3f", value)
        }
        let tables = status.targets.map { t in
            var fields = [
                "\"table\":\(JSONCompactor.quote(t.table))",
                "\"mode\":\(JSONCompactor.quote(t.mode))",
            ]
            if !t.primaryKey.isEmpty { fields.append("\"primary_key\":[\(JSONCompactor.quote(t.primaryKey))]") }
            if !t.tags.isEmpty { fields.append("\"tags\":\(t.tags)") }
            fields += [
                "\"pending\":\(t.pending)",
                "\"pending_bytes\":\(t.pendingBytes)",
                "\"oldest_age_s\":\(number(t.oldestAgeSeconds))",
                "\"dead_letters\":\(t.deadLetters)",
                "\"state\":\(JSONCompactor.quote(Self.state(t)))",
                "\"state_until\":\(t.stateUntil.map { "\"\(Self.timestamp($0))\"" } ?? "null")",
                "\"last_success\":\(t.lastSuccessAt.map { "\"\(Self.timestamp($0))\"" } ?? "null")",
                "\"last_error\":\(t.lastError.map(JSONCompactor.quote) ?? "null")",
            ]
            return "{" + fields.joined(separator: ",") + "}"
        }
        let datagrams = "{\"received\":\(status.datagrams.received),\"rejected\":\(status.datagrams.rejected),\"dropped\":\(status.datagrams.dropped)}"
        return "{\"pending\":\(status.pending),\"pending_bytes\":\(status.pendingBytes),\"dead_letters\":\(status.deadLetters),"
            + "\"datagrams\":\(datagrams),\"tables\":[\(tables.joined(separator: ","))]}"
    }

    /// The target's ``TargetState/Kind`` as operators read it: "idle", "delivering", "backing off",
    /// "isolating bad rows", "held: table not found" or "auth failing".
    static func state(_ t: SpoolStatus.Target) -> String {
        if let state = t.deliveryState, t.pending > 0 { return state.kind.rawValue }
        return (t.pending > 0 ? TargetState.Kind.delivering : .idle).rawValue
    }

    static func timestamp(_ seconds: Double) -> String {
        DeadLetterCommand.timestamp(Date(timeIntervalSince1970: seconds))
    }

    static func table(_ status: SpoolStatus, spool: String) -> String {
        var out = "spool \(spool): \(status.pending) pending (\(ByteSize(bytes: status.pendingBytes))), \(status.deadLetters) dead letters\n"
        if status.datagrams.received > 0 {
            out += "datagrams: \(status.datagrams.received) received, \(status.datagrams.rejected) rejected, \(status.datagrams.dropped) dropped\n"
        }
        guard !status.targets.isEmpty else { return out + "no targets yet" }
        let header = ["TABLE", "MODE", "PENDING", "BYTES", "OLDEST", "DEAD", "STATE", "LAST SUCCESS", "LAST ERROR"]
        let rows = status.targets.map { t -> [String] in
            var mode = t.mode
            if !t.primaryKey.isEmpty { mode += "(\(t.primaryKey))" }
            var table = t.table
            if !t.tags.isEmpty { table += " \(t.tags)" }
            return [table, mode, "\(t.pending)", ByteSize(bytes: t.pendingBytes).description,
                    t.oldestAgeSeconds.map { String(format: "%.1fs", $0) } ?? "-", "\(t.deadLetters)",
                    state(t) + (t.stateUntil.map { " until \(timestamp($0))" } ?? ""),
                    t.lastSuccessAt.map(timestamp) ?? "-", t.lastError ?? "-"]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        let render: ([String]) -> String = { cells in
            cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingWhitespace()
        }
        return out + ([header] + rows).map(render).joined(separator: "\n")
    }
}

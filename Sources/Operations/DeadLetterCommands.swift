import ArgumentParser
import Core
import FoundationEssentials
import Glibc
import Spool

/// `definite-agent dlq …`: inspect and repair the dead-letter queue.
struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "Inspect, replay, export and purge dead-lettered rows (safe while the daemon runs).",
        subcommands: [List.self, Show.self, Replay.self, Purge.self, Export.self])

    /// Ends the command with exit 1 when the ids it was given are not all in the queue (as `dlq show` does).
    static func refuseMissing(_ missing: [Int64], doing verb: String) throws {
        guard !missing.isEmpty else { return }
        let list = missing.map(String.init).joined(separator: ", ")
        printError("error: nothing \(verb): no dead letter with id \(list) (see dlq list)")
        throw ExitCode(1)
    }

    /// A `--table` that selects nothing is refused like an unknown `--id` (exit 1): at 3 a.m. a mistyped
    /// table name read as "replayed 0 entries", exit 0, as if the job were done.
    static func refuseEmpty(_ selection: DeadLetterStore.Selection, entries: Int, doing verb: String) throws {
        guard case .table(let table) = selection, entries == 0 else { return }
        printError("error: nothing \(verb): no dead letter for table \(table) (see dlq list)")
        throw ExitCode(1)
    }

    static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle())
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead-letter entries, oldest first.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this table (\"ns.table\" or \"LAKE.ns.table\", the same rows).") var table: String?
        @Flag(help: "Print a JSON array.") var json = false

        func validate() throws { try validateTable(table) }

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            let entries = try await reportingErrors { try DeadLetterStore(path: path).list(table: table) }
            if json {
                let items = entries.map { e in
                    "{\"id\":\(e.id),\"table\":\(JSONCompactor.quote(e.table)),\"reason\":\(JSONCompactor.quote(e.reason)),"
                        + "\"status\":\(e.status.map(String.init) ?? "null"),\"rows\":\(e.rows),\"partial\":\(e.partial),"
                        + "\"failed_at\":\"\(DeadLetterCommand.timestamp(e.lastFailedAt))\",\"tags\":\(e.tags.isEmpty ? "[]" : e.tags)}"
                }
                print("[" + items.joined(separator: ",") + "]")
                return
            }
            guard !entries.isEmpty else {
                print("no dead letters")
                return
            }
            print("ID\tTABLE\tSTATUS\tROWS\tFAILED AT\tREASON")
            for e in entries {
                print(
                    "\(e.id)\t\(e.table)\t\(e.status.map(String.init) ?? "-")\t\(e.rows)\(e.partial ? " (partial)" : "")\t\(DeadLetterCommand.timestamp(e.lastFailedAt))\t\(e.reason)"
                )
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one entry: its rows and everything known about the failure.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The entry's id (from dlq list).") var id: Int64

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            guard let e = try await reportingErrors({ try DeadLetterStore(path: path).show(id: id) }) else {
                printError("error: no dead letter with id \(id) (see dlq list)")
                throw ExitCode(1)
            }
            // One output path for header and rows, so they cannot be reordered by stdout buffering.
            let header = """
                id:          \(e.id)
                table:       \(e.table) (\(e.mode.rawValue)\(e.primaryKey.isEmpty ? "" : " on \(e.primaryKey)"))
                reason:      \(e.reason)
                status:      \(e.status.map(String.init) ?? "-")
                rows:        \(e.rows)\(e.partial ? " (partial: the whole request is kept; the API wrote some of its rows and did not say which)" : "")
                request_id:  \(e.requestID ?? "-")
                tags:        \(e.tagsSummary ?? "-")
                attempts:    \(e.attempts)
                first fail:  \(DeadLetterCommand.timestamp(e.firstFailedAt))
                last fail:   \(DeadLetterCommand.timestamp(e.lastFailedAt))
                errors:      \(e.errors)
                warnings:    \(e.warnings)
                rows follow:

                """
            try writeOutput(Array(header.utf8) + e.records, exporting: "entry \(e.id)")
        }
    }

    struct Selection: ParsableArguments {
        @Option(name: .customLong("id"), parsing: .upToNextOption, help: "Entry ids.") var ids: [Int64] = []
        @Option(help: "Every entry of this table (\"ns.table\" or \"LAKE.ns.table\", the same rows).") var table: String?
        @Flag(help: "Every entry.") var all = false

        func validate() throws {
            let chosen = (ids.isEmpty ? 0 : 1) + (table == nil ? 0 : 1) + (all ? 1 : 0)
            guard chosen == 1 else { throw ValidationError("choose exactly one of --id, --table or --all") }
            try validateTable(table)
        }

        var value: DeadLetterStore.Selection {
            if !ids.isEmpty { return .ids(ids) }
            if let table { return .table(table) }
            return .all
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put entries' rows back into the queue, in their original order.",
            discussion: """
                A partial entry holds a whole request the API partly wrote without saying which rows it rejected: \
                replaying it writes the accepted rows a second time. Such a selection is refused unless \
                --include-written is given; `dlq export --rejected-only` leaves those entries out.
                """)
        @OptionGroup var global: GlobalOptions
        @OptionGroup var selection: Selection
        @Flag(help: "Replay partial entries too, although the API already wrote some of their rows (they are written again).")
        var includeWritten = false

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            let outcome = try await reportingErrors {
                try DeadLetterStore(path: path).replay(selection.value, includeWritten: includeWritten)
            }
            try DeadLetterCommand.refuseMissing(outcome.missing, doing: "replayed")
            try DeadLetterCommand.refuseEmpty(selection.value, entries: outcome.entries + outcome.refusedPartial.count, doing: "replayed")
            guard outcome.refusedPartial.isEmpty else {
                let list = outcome.refusedPartial.map { "\($0.id) (\($0.rows) rows)" }.joined(separator: ", ")
                printError(
                    """
                    error: nothing replayed: partial entries \(list) hold rows the API already wrote (it rejected some \
                    and did not say which), so replaying them would write those rows a second time. Add \
                    --include-written to replay them anyway, or select other entries.
                    """)
                throw ExitCode(1)
            }
            print("replayed \(outcome.entries) entries (\(outcome.rows) rows) into the queue")
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete entries for good.")
        @OptionGroup var global: GlobalOptions
        @Option(name: .customLong("id"), parsing: .upToNextOption, help: "Entry ids.") var ids: [Int64] = []
        @Option(help: "Every entry of this table (\"ns.table\" or \"LAKE.ns.table\", the same rows).") var table: String?
        @Flag(help: "Every entry.") var all = false
        @Option(help: "Entries whose last failure is older than this, e.g. \"7d\".") var olderThan: String?
        @Flag(help: "Confirm: purged rows cannot be recovered.") var yes = false

        func validate() throws {
            let chosen = (ids.isEmpty ? 0 : 1) + (table == nil ? 0 : 1) + (all ? 1 : 0) + (olderThan == nil ? 0 : 1)
            guard chosen == 1 else { throw ValidationError("choose exactly one of --id, --table, --all or --older-than") }
            try validateTable(table)
            if let olderThan, case .failure(let failure) = HumanDuration.parse(olderThan) {
                throw ValidationError("--older-than \(failure.explanation(olderThan))")
            }
            guard yes else { throw ValidationError("purging deletes rows for good; add --yes to confirm") }
        }

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            let selection: DeadLetterStore.Selection =
                !ids.isEmpty
                ? .ids(ids) : table.map { .table($0) } ?? (all ? .all : .olderThan(HumanDuration(parsing: olderThan!)!.seconds))
            let outcome = try await reportingErrors { try DeadLetterStore(path: path).purge(selection) }
            try DeadLetterCommand.refuseMissing(outcome.missing, doing: "purged")
            try DeadLetterCommand.refuseEmpty(selection, entries: outcome.entries, doing: "purged")
            print("purged \(outcome.entries) entries (\(outcome.rows) rows)")
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write dead-lettered rows to stdout as NDJSON (one row per line).",
            discussion: """
                Exits 74 when standard output cannot be written whole (a full disk behind > FILE, a closed \
                pipe): the output is then incomplete, and nothing exported should be purged.
                """)
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this table (\"ns.table\" or \"LAKE.ns.table\", the same rows).") var table: String?
        @Flag(help: "Only rows known to be rejected by the API: leave out partial entries (they hold rows it wrote) and expired rows.")
        var rejectedOnly = false

        func validate() throws { try validateTable(table) }

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            let store = DeadLetterStore(path: path)
            var last: Int64 = 0
            while true {
                let entries = try await reportingErrors { try store.export(table: table, rejectedOnly: rejectedOnly, after: last) }
                guard let end = entries.last?.id else { return }
                for entry in entries {
                    try writeOutput(entry.records, exporting: "the rows of entry \(entry.id)")
                }
                last = end
            }
        }
    }
}

/// `definite-agent queue …`
struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Look at what is waiting to be delivered.",
        subcommands: [Peek.self])

    struct Peek: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The oldest pending rows of each target, with their age and batch state.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this table (\"ns.table\" or \"LAKE.ns.table\", the same rows).") var table: String?
        @Option(help: "Rows per target (at least 1).") var limit = 10
        @Flag(help: "One JSON object per line.") var json = false

        func validate() throws {
            guard limit >= 1 else { throw ValidationError("--limit must be at least 1") }
            try validateTable(table)
        }

        func run() async throws {
            let path = try global.loadConfiguration().0.spool.path
            let rows = try await reportingErrors { try QueuePeek.read(path: path, table: table, limit: limit) }
            for row in rows {
                if json {
                    print(
                        "{\"table\":\(JSONCompactor.quote(row.table)),\"seq\":\(row.seq),\"age_s\":\(row.ageSeconds.fixed(3)),"
                            + "\"batch\":\(row.batchID.map(JSONCompactor.quote) ?? "null"),\"attempts\":\(row.attempts),"
                            + "\"last_status\":\(row.lastStatus.map(String.init) ?? "null"),\"last_error\":\(row.lastError.map(JSONCompactor.quote) ?? "null"),"
                            + "\"record\":\(row.record)}")
                } else {
                    let batch =
                        row.batchID.map { "batch \($0), \(row.attempts) attempts\(row.lastStatus.map { ", last \($0)" } ?? "")" }
                        ?? "not yet batched"
                    print("\(row.table)\tseq \(row.seq)\t\(row.ageSeconds.fixed(1))s\t\(batch)\t\(row.record)")
                }
            }
            if rows.isEmpty, !json { print("nothing pending") }
        }
    }
}

/// A `--table` that cannot name a table is a usage error, not a filter that matches nothing (or, read as
/// `LAKE.ns.table`'s short form, the rows of another table).
func validateTable(_ table: String?) throws {
    if let table, let problem = TableName.problem(with: table) { throw ValidationError("--table: \(problem)") }
}

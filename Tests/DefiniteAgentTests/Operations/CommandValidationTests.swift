import ArgumentParser
import Foundation
import Glibc
import Logging
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

/// What the command line takes and refuses, and with which message, before any command runs (parsing
/// and `validate()` only: no configuration is read, no socket or spool is touched).
@Suite("Command validation")
struct CommandValidationTests {
    /// The message and exit code `arguments` are refused with, or nil if they parse.
    func refusal(_ arguments: [String]) -> (message: String, exitCode: Int32)? {
        do {
            _ = try DefiniteAgentCommand.parseAsRoot(arguments)
            return nil
        } catch {
            return (DefiniteAgentCommand.message(for: error), DefiniteAgentCommand.exitCode(for: error).rawValue)
        }
    }

    func parsed<Command: ParsableCommand>(_ arguments: [String], as type: Command.Type) throws -> Command {
        let command = try DefiniteAgentCommand.parseAsRoot(arguments)
        return try #require(command as? Command, "\(arguments) parsed as \(Swift.type(of: command))")
    }

    // MARK: send

    @Test(arguments: [
        (["send", "--mode", "merge"], "--mode merge needs --primary-key COLUMN"),
        (["send", "--table", "bronze.users", "--mode", "merge"], "--mode merge needs --primary-key COLUMN"),
        (
            ["send", "--mode", "append", "--primary-key", "id"],
            "--primary-key applies only to merge: drop --mode append, or drop --primary-key"
        ),
        (["send", "--mode", "bogus"], "The value 'bogus' is invalid for '--mode <mode>'. Please provide one of 'append' and 'merge'."),
        (
            ["send", "--mode", "Merge", "--primary-key", "id"],
            "The value 'Merge' is invalid for '--mode <mode>'. Please provide one of 'append' and 'merge'."
        ),
        (["send", "--mode", ""], "The value '' is invalid for '--mode <mode>'. Please provide one of 'append' and 'merge'."),
        (
            ["send", "--primary-key", "id,name"],
            "--primary-key must name exactly one column (the Stream API does not support composite keys)"
        ),
        (["send", "--primary-key", ""], "--primary-key must name exactly one column (the Stream API does not support composite keys)"),
        (["send", "--table", "events"], #"table "events" must be "namespace.table" or "LAKE.namespace.table""#),
        (["send", "--table", "a.b.c.d"], #"table "a.b.c.d" must be "namespace.table" or "LAKE.namespace.table""#),
        (
            ["send", "--table", "bronze.9lives"],
            #"table "bronze.9lives" has an invalid part "9lives" (letters, digits and _ only, not starting with a digit)"#
        ),
        (
            ["send", "--table", "bronze."],
            #"table "bronze." has an invalid part "" (letters, digits and _ only, not starting with a digit)"#
        ),
    ])
    func sendRefusesInconsistentOptions(arguments: [String], message: String) throws {
        let refused = try #require(refusal(arguments), "\(arguments) was accepted")
        #expect(refused.message == message)
        #expect(refused.exitCode == ExitCode.validationFailure.rawValue)
        #expect(refused.exitCode == 64)
    }

    @Test func sendRefusesWhatItDoesNotKnow() throws {
        #expect(try #require(refusal(["send", "--bogus"])).message.contains("Unknown option '--bogus'"))
        #expect(try #require(refusal(["send", "a.ndjson", "b.ndjson"])).message.contains("Unexpected argument 'b.ndjson'"))
        #expect(try #require(refusal(["send", "--table"])).message.contains("Missing value for '--table <table>'"))
    }

    @Test func sendTakesConsistentOptions() throws {
        let plain = try parsed(["send"], as: SendCommand.self)
        #expect(plain.table == nil && plain.mode == nil && plain.primaryKey == nil && plain.socket == nil && plain.file == nil)
        #expect(!plain.noWait)

        let merge = try parsed(["send", "--table", "LAKE.bronze.users", "--mode", "merge", "--primary-key", "id"], as: SendCommand.self)
        #expect(merge.table == "LAKE.bronze.users" && merge.mode == .merge && merge.primaryKey == "id")

        // --primary-key alone implies merge.
        let implied = try parsed(["send", "--primary-key", "user_id"], as: SendCommand.self)
        #expect(implied.mode == nil && implied.primaryKey == "user_id")

        let append = try parsed(["send", "--mode", "append", "--table", "bronze.events"], as: SendCommand.self)
        #expect(append.mode == .append)

        let all = try parsed(["send", "--config", "/etc/a.toml", "--socket", "/tmp/a.sock", "--no-wait", "-"], as: SendCommand.self)
        #expect(all.global.config == "/etc/a.toml" && all.socket == "/tmp/a.sock" && all.noWait && all.file == "-")

        // SendCommand.parse takes the same arguments without the subcommand's name.
        let direct = try SendCommand.parse(["--table", "bronze.t", "rows.ndjson"])
        #expect(direct.table == "bronze.t" && direct.file == "rows.ndjson")
        #expect(throws: (any Error).self) { try SendCommand.parse(["--mode", "merge"]) }
    }

    // MARK: run

    @Test func runTakesOnlyKnownLogLevels() throws {
        let refused = try #require(refusal(["run", "--log-level", "bogus"]))
        #expect(refused.message.hasPrefix("The value 'bogus' is invalid for '--log-level <level>'. Please provide one of the following:"))
        for level in Logger.Level.allCases { #expect(refused.message.contains("- \(level.rawValue)")) }
        #expect(refused.exitCode == 64)
        #expect(try parsed(["run", "--log-level", "DEBUG"], as: RunCommand.self).logLevel == .debug)
        #expect(refusal(["run", "--log-level", "warn"]) != nil)

        for level in Logger.Level.allCases {
            #expect(try parsed(["run", "--log-level", level.rawValue], as: RunCommand.self).logLevel == level)
        }
        #expect(try parsed(["run"], as: RunCommand.self).logLevel == nil)
        #expect(try parsed(["run", "--config", "/etc/x.toml"], as: RunCommand.self).global.config == "/etc/x.toml")
    }

    // MARK: queue, dlq, status, config

    @Test func queuePeekNeedsALimitOfAtLeastOne() throws {
        #expect(try #require(refusal(["queue", "peek", "--limit", "0"])).message == "--limit must be at least 1")
        #expect(try #require(refusal(["queue", "peek", "--limit=-3"])).message == "--limit must be at least 1")
        #expect(
            try #require(refusal(["queue", "peek", "--limit", "ten"])).message.contains("The value 'ten' is invalid for '--limit <limit>'"))

        let defaults = try parsed(["queue", "peek"], as: QueueCommand.Peek.self)
        #expect(defaults.limit == 10 && defaults.table == nil && !defaults.json)
        let chosen = try parsed(["queue", "peek", "--limit", "1", "--table", "bronze.e", "--json"], as: QueueCommand.Peek.self)
        #expect(chosen.limit == 1 && chosen.table == "bronze.e" && chosen.json)
    }

    @Test(arguments: [
        ["dlq", "replay"],
        ["dlq", "replay", "--id", "1", "--all"],
        ["dlq", "replay", "--table", "bronze.t", "--all"],
        ["dlq", "replay", "--id", "1", "--table", "bronze.t"],
    ])
    func dlqReplayNeedsExactlyOneSelection(arguments: [String]) throws {
        #expect(try #require(refusal(arguments)).message == "choose exactly one of --id, --table or --all")
    }

    @Test func dlqReplayTakesOneSelection() throws {
        let ids = try parsed(["dlq", "replay", "--id", "3", "1", "2"], as: DeadLetterCommand.Replay.self)
        guard case .ids(let chosen) = ids.selection.value else {
            Issue.record("not ids: \(ids.selection.value)")
            return
        }
        #expect(chosen == [3, 1, 2])
        #expect(!ids.includeWritten)
        let table = try parsed(["dlq", "replay", "--table", "bronze.t"], as: DeadLetterCommand.Replay.self)
        guard case .table("bronze.t") = table.selection.value else {
            Issue.record("not the table: \(table.selection.value)")
            return
        }
        let all = try parsed(["dlq", "replay", "--all", "--include-written"], as: DeadLetterCommand.Replay.self)
        guard case .all = all.selection.value else {
            Issue.record("not all: \(all.selection.value)")
            return
        }
        #expect(all.includeWritten)
    }

    @Test(arguments: [
        (["dlq", "purge", "--yes"], "choose exactly one of --id, --table, --all or --older-than"),
        (["dlq", "purge", "--all", "--older-than", "7d", "--yes"], "choose exactly one of --id, --table, --all or --older-than"),
        (["dlq", "purge", "--id", "4", "--table", "bronze.t", "--yes"], "choose exactly one of --id, --table, --all or --older-than"),
        (["dlq", "purge", "--all"], "purging deletes rows for good; add --yes to confirm"),
        (["dlq", "purge", "--id", "4"], "purging deletes rows for good; add --yes to confirm"),
        (
            ["dlq", "purge", "--older-than", "7x", "--yes"],
            #"--older-than "7x" is not a duration; write e.g. "500ms", "30s", "5m", "2h" or "7d""#
        ),
        (
            ["dlq", "purge", "--older-than", "soon"],
            #"--older-than "soon" is not a duration; write e.g. "500ms", "30s", "5m", "2h" or "7d""#
        ),
        // Past 2^63 ms this stopped the process (SIGILL) instead of refusing it.
        (
            ["dlq", "purge", "--older-than", "99999999999999d", "--yes"],
            #"--older-than "99999999999999d" is longer than the longest duration the agent takes, 36500d"#
        ),
    ])
    func dlqPurgeNeedsOneSelectionAndConfirmation(arguments: [String], message: String) throws {
        #expect(try #require(refusal(arguments), "\(arguments) was accepted").message == message)
    }

    @Test func dlqPurgeTakesOneConfirmedSelection() throws {
        let older = try parsed(["dlq", "purge", "--older-than", "7d", "--yes"], as: DeadLetterCommand.Purge.self)
        #expect(older.olderThan == "7d" && older.yes && older.ids.isEmpty && !older.all)
        #expect(try parsed(["dlq", "purge", "--id", "4", "5", "--yes"], as: DeadLetterCommand.Purge.self).ids == [4, 5])
        #expect(try parsed(["dlq", "purge", "--all", "--yes"], as: DeadLetterCommand.Purge.self).all)
    }

    @Test func dlqShowAndListTakeTheirArguments() throws {
        #expect(try parsed(["dlq", "show", "42"], as: DeadLetterCommand.Show.self).id == 42)
        #expect(try #require(refusal(["dlq", "show"])).message.contains("Missing expected argument '<id>'"))
        #expect(try #require(refusal(["dlq", "show", "forty-two"])).message.contains("The value 'forty-two' is invalid for '<id>'"))
        let list = try parsed(["dlq", "list", "--table", "bronze.t", "--json"], as: DeadLetterCommand.List.self)
        #expect(list.table == "bronze.t" && list.json)
        let export = try parsed(["dlq", "export", "--rejected-only"], as: DeadLetterCommand.Export.self)
        #expect(export.rejectedOnly && export.table == nil)
    }

    @Test func statusMaxAgeGoesWithCheckAndMustBeADuration() throws {
        #expect(try #require(refusal(["status", "--max-age", "10m"])).message == "--max-age goes with --check")
        #expect(
            try #require(refusal(["status", "--check", "--max-age", "ten minutes"])).message
                == #"--max-age "ten minutes" is not a duration; write e.g. "500ms", "30s", "5m", "2h" or "7d""#)
        #expect(
            try #require(refusal(["status", "--check", "--max-age", "106751991168d"])).message
                == #"--max-age "106751991168d" is longer than the longest duration the agent takes, 36500d"#)

        let check = try parsed(["status", "--check", "--max-age", "10m"], as: StatusCommand.self)
        #expect(check.check && check.maxAge == "10m" && !check.json)
        let json = try parsed(["status", "--json"], as: StatusCommand.self)
        #expect(json.json && !json.check && json.maxAge == nil)
    }

    @Test func configCheckTakesTheConfigurationFile() throws {
        #expect(
            try parsed(["config", "check", "--config", "/etc/definite-agent/agent.toml"], as: ConfigCheckCommand.self).global.config
                == "/etc/definite-agent/agent.toml")
        #expect(try parsed(["config", "check"], as: ConfigCheckCommand.self).global.config == nil)
        #expect(try #require(refusal(["config", "check", "--config"])).message.contains("Missing value for '--config <path>'"))
    }

    /// A `--table` that cannot name a table matched nothing, or, read as the short form of `LAKE.ns.table`,
    /// another table's rows (`--table events` and the table `lake.events`): it is a usage error.
    @Test func aTableOptionMustNameATable() throws {
        for command in [
            ["dlq", "list"], ["dlq", "export"], ["dlq", "replay"], ["dlq", "purge", "--yes"], ["queue", "peek"],
        ] {
            let message = try #require(refusal(command + ["--table", "events"]), "\(command)").message
            #expect(message.contains(#"--table: table "events" must be "namespace.table""#), "\(command): \(message)")
            #expect(refusal(command + ["--table", "LAKE.bronze.events"]) == nil, "\(command)")
        }
    }

    @Test func unknownCommandsAreRefused() throws {
        #expect(try #require(refusal(["frobnicate"])).message.contains("Unexpected argument 'frobnicate'"))
        #expect(try #require(refusal(["queue", "poke"])).message.contains("Unexpected argument 'poke'"))
    }

    /// After the documented install (`install -m 600 KEY /etc/definite-agent/api-key`), `config check` said
    /// the key was not set: only systemd reads that file, as the service's credential.
    @Test func configCheckSaysAPackagedCredentialIsReadBySystemdOnly() throws {
        let absent = "/nonexistent-\(getpid())/api-key"
        #expect(ConfigCheckCommand.keyNotSet(packagedCredential: absent).hasPrefix("<not set: set [api] key_file"))
        let present = FileManager.default.temporaryDirectory.path + "/credential-\(getpid())"
        #expect(FileManager.default.createFile(atPath: present, contents: Data()))
        defer { unlink(present) }
        #expect(
            ConfigCheckCommand.keyNotSet(packagedCredential: present)
                == "<not read here: systemd passes \(present) to the service as the credential api-key (LoadCredential=); set [api] key_file to check it with this command>"
        )
    }
}

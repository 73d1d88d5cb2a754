import Core
import ArgumentParser
import FoundationEssentials
import Glibc

/// `definite-agent config …`
struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with the configuration file.",
        subcommands: [ConfigCheckCommand.self])
}

/// `definite-agent config check`: validates the file and prints the effective configuration.
struct ConfigCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the configuration and print the effective settings (the API key is redacted).",
        discussion: """
            Exits 0 when the configuration is usable (risky settings are printed as warnings on stderr and as \
            comments in the output) and 78 (EX_CONFIG) when it is not.
            """)

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (configuration, source) = try global.loadConfiguration()
        let key: String
        do {
            key = try APIKeySource.load(config: configuration.api).map { "\($0)" }
                ?? "<not set: set [api] key_file, $DEFINITE_API_KEY or the systemd credential api-key>"
        } catch {
            printError("error: \(error)")
            throw ExitCode(ConfigurationError.exitCode)
        }
        for problem in PathCheck.problems(in: configuration) {
            printError("error: \(problem)")
            throw ExitCode(ConfigurationError.exitCode)
        }
        let warnings = ConfigurationWarning.all(in: configuration)
        for warning in warnings { printError("warning: \(warning)") }
        print("# effective configuration, from \(source)")
        for warning in warnings { print("# warning: \(warning)") }
        print(EffectiveConfiguration.render(configuration, apiKey: key))
    }
}

/// Renders a configuration as TOML with every key, defaults included.
enum EffectiveConfiguration {
    static func render(_ c: AgentConfiguration, apiKey: String) -> String {
        func q(_ s: String) -> String { JSONCompactor.quote(s) }
        let diskReserve: String = c.spool.diskReserve.map { "disk_reserve = \(q($0.description))" }
            ?? "disk_reserve = \"auto\"  # 5% of the spool's filesystem, at most 64MiB"
        let group: String = c.spool.group.map { "group = \(q($0))  # the spool's files are 0640, readable by this group" }
            ?? "# group not set: the spool's files are 0600, readable by the daemon's user only"
        var lines = [
            "[api]",
            "url = \(q(c.api.url))",
            c.api.keyFile.map { "key_file = \(q($0))" } ?? "# key_file not set",
            "# key = \(apiKey)",
            "timeout = \(q(c.api.timeout.description))",
            "",
            "[spool]",
            "path = \(q(c.spool.path))",
            "max_bytes = \(q(c.spool.maxBytes.description))",
            "durability = \(q(c.spool.durability.rawValue))",
            diskReserve,
            group,
            "",
            "[intake]",
        ]
        let ids: ([UInt32]) -> String = { "[" + $0.map { String($0) }.joined(separator: ", ") + "]" }
        let optional: (String, String?) -> String = { key, value in value.map { "\(key) = \(q($0))" } ?? "# \(key) not set" }
        lines.append("socket = \(q(c.intake.socket))")
        lines.append("socket_mode = \(q("0" + String(c.intake.socketMode, radix: 8)))")
        lines.append(optional("default_table", c.intake.defaultTable))
        lines.append("max_line_bytes = \(q(c.intake.maxLineBytes.description))")
        lines.append("allow_uids = \(ids(c.intake.allowUIDs))")
        lines.append("allow_gids = \(ids(c.intake.allowGIDs))")
        lines.append("http_socket = \(q(c.intake.httpSocket))")
        lines.append(optional("http_listen", c.intake.httpListen))
        lines.append("http_allow_remote = \(c.intake.httpAllowRemote)")
        lines.append(c.intake.httpToken == nil
            ? "# http_token not set\(c.intake.httpListen == nil ? "" : ": anyone who can reach http_listen can write records")"
            : "# http_token = <redacted>")
        lines.append(optional("datagram_socket", c.intake.datagramSocket))
        lines.append("wait_timeout = \(q(c.intake.waitTimeout.description))")
        lines.append("")
        for table in c.tables {
            lines += ["[[table]]", "name = \(q(table.name))", "mode = \(q(table.mode.rawValue))"]
            if let key = table.primaryKey { lines.append("primary_key = [\(q(key))]") }
            lines.append("")
        }
        lines += [
            "[batch]",
            "max_rows = \(c.batch.maxRows)",
            "max_bytes = \(q(c.batch.maxBytes.description))",
            "linger = \(q(c.batch.linger.description))",
            "compression = \(q(c.batch.compression.rawValue))",
            "gzip_level = \(c.batch.gzipLevel)",
            "format = \(q(c.batch.format.rawValue))",
            "concurrency = \(c.batch.concurrency)",
            "max_in_flight = \(c.batch.maxInFlight)",
            "",
            "[retry]",
            "initial = \(q(c.retry.initial.description))",
            "max = \(q(c.retry.max.description))",
            "max_age = \(q(c.retry.maxAge.description))",
            "",
            "[service]",
            "drain_timeout = \(q(c.service.drainTimeout.description))",
            "",
            "[metrics]",
            c.metrics.listen.map { "listen = \(q($0))" } ?? "# listen not set: no metrics endpoint",
            "",
            "[log]",
            "level = \(q(c.log.level))",
            "format = \(q(c.log.format.rawValue))",
        ]
        return lines.joined(separator: "\n")
    }
}

/// Paths the daemon must be able to create or write, checked before it starts.
enum PathCheck {
    static func problems(in configuration: AgentConfiguration) -> [ConfigurationError] {
        var problems: [ConfigurationError] = []
        if let problem = problem(creatingFileAt: configuration.spool.path) {
            problems.append(ConfigurationError(.unusablePath, key: "spool.path", problem))
        }
        if let problem = problem(creatingFileAt: configuration.intake.socket) {
            problems.append(ConfigurationError(.unusablePath, key: "intake.socket", problem))
        }
        return problems
    }

    /// Why a file at `path` could not be created or written, or `nil` if it could.
    static func problem(creatingFileAt path: String) -> String? {
        if FileSystem.exists(path) {
            return access(path, W_OK) == 0 ? nil : "\(path) exists but is not writable by this user"
        }
        var directory = FileSystem.parentDirectory(of: path)
        if directory.isEmpty { directory = "." }
        while !FileSystem.exists(directory) {
            let parent = FileSystem.parentDirectory(of: directory)
            if parent == directory || parent.isEmpty { break }
            directory = parent
        }
        guard FileSystem.isDirectory(directory) else {
            return "\(directory) is not a directory, so \(path) cannot be created"
        }
        return access(directory, W_OK | X_OK) == 0 ? nil : "cannot create \(path): \(directory) is not writable by this user"
    }
}

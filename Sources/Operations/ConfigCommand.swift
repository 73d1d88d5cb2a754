import ArgumentParser
import Core
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
        let loaded: APIKey?
        do {
            loaded = try APIKeySource.load(config: configuration.api)
        } catch {
            printError("error: \(error)")
            throw ExitCode(ConfigurationError.exitCode)
        }
        for problem in PathCheck.problems(in: configuration) {
            printError("error: \(problem)")
            throw ExitCode(ConfigurationError.exitCode)
        }
        var warnings = ConfigurationWarning.all(in: configuration).map(\.description)
        if let loaded, let warning = APIKeySource.exposureWarning(path: loaded.source, agentGroups: nil) { warnings.append(warning) }
        let key = loaded.map { "\($0)" } ?? Self.keyNotSet()
        for warning in warnings { printError("warning: \(warning)") }
        print("# effective configuration, from \(source)")
        for warning in warnings { print("# warning: \(warning)") }
        print(EffectiveConfiguration.render(configuration, apiKey: key))
    }

    /// Where the key comes from when this command finds none. The package's unit passes
    /// ``packagedCredential`` to the service (`LoadCredential=`), which only systemd reads: after the
    /// documented install this command would otherwise say "not set" with the key in place.
    static func keyNotSet(packagedCredential: String = "/etc/definite-agent/api-key") -> String {
        guard access(packagedCredential, F_OK) == 0 else {
            return "<not set: set [api] key_file, $DEFINITE_API_KEY or the systemd credential api-key>"
        }
        return "<not read here: systemd passes \(packagedCredential) to the service as the credential api-key (LoadCredential=); "
            + "set [api] key_file to check it with this command>"
    }
}

/// Renders a configuration as TOML with every key, defaults included: the sections and keys of
/// ``ConfigKey/all``, in its order, each as ``ConfigKey`` renders it.
enum EffectiveConfiguration {
    static func render(_ c: AgentConfiguration, apiKey: String) -> String {
        var lines: [String] = []
        for (name, keys) in ConfigKey.sections {
            if keys.count == 1, keys[0].isArrayOfTables {
                lines += keys[0].lines(c)  // `[[table]]` blocks, each followed by a blank line
                continue
            }
            lines.append("[\(name)]")
            for key in keys {
                lines += key.lines(c)
                // The key itself is no configuration key (it is never in the file): where it comes from.
                if key == .apiKeyFile { lines.append("# key = \(apiKey)") }
            }
            lines.append("")
        }
        if lines.last == "" { lines.removeLast() }
        return lines.joined(separator: "\n")
    }
}

/// Paths the daemon must be able to create or write, checked before it starts.
enum PathCheck {
    static func problems(in configuration: AgentConfiguration) -> [ConfigurationError] {
        var problems: [ConfigurationError] = []
        if let problem = problem(creatingFileAt: configuration.spool.path) {
            problems.append(ConfigurationError(.unusablePath, key: ConfigKey.spoolPath.name, problem))
        }
        if let problem = problem(creatingFileAt: configuration.intake.socket) {
            problems.append(ConfigurationError(.unusablePath, key: ConfigKey.intakeSocket.name, problem))
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

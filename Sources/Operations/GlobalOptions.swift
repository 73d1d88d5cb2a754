import ArgumentParser
import Core
import Daemon
import FoundationEssentials
import Glibc
import Logging
import Spool

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The configuration file.", valueName: "path"))
    var config: String?

    /// The file the configuration is read from, or `nil` when the embedded defaults are in use.
    var configurationPath: String? {
        if let config { return config }
        return FileManager.default.fileExists(atPath: ConfigurationLoader.defaultPath) ? ConfigurationLoader.defaultPath : nil
    }

    /// Loads the configuration. Without `--config`, a missing default file means the embedded defaults;
    /// a file named explicitly must exist.
    func loadConfiguration() throws -> (AgentConfiguration, source: String) {
        do throws(ConfigurationError) {
            if let config { return (try ConfigurationLoader.load(path: config), config) }
            if FileManager.default.fileExists(atPath: ConfigurationLoader.defaultPath) {
                return (try ConfigurationLoader.load(path: ConfigurationLoader.defaultPath), ConfigurationLoader.defaultPath)
            }
            return (AgentConfiguration(), "embedded defaults (\(ConfigurationLoader.defaultPath) does not exist)")
        } catch {
            printError("error: \(error)")
            throw ExitCode(ConfigurationError.exitCode)
        }
    }
}

func printError(_ message: String) {
    try? FileSystem.write(Array((message + "\n").utf8), to: STDERR_FILENO)
}

/// Writes `bytes` (`what`, for the error) to standard output as they are, after whatever `print` wrote
/// before. A failed write (a full disk behind `> file`, a closed pipe) ends the command with exit code 74
/// and says so: `dlq export > file && dlq purge` must not purge what never reached the file.
func writeOutput(_ bytes: [UInt8], exporting what: String) throws {
    do {
        guard fflush(nil) == 0 else { throw SystemCallError() }
        try FileSystem.write(bytes, to: STDOUT_FILENO)
    } catch {
        printError("error: cannot write \(what) to standard output: \(error); the output is incomplete")
        CommandOutput.errorReported()
        throw ExitCode(EX_IOERR)
    }
}

/// Runs `body`, turning the agent's own errors into a message on stderr and their exit code.
func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as ConfigurationError {
        printError("error: \(error)")
        throw ExitCode(ConfigurationError.exitCode)
    } catch let error as SpoolError {
        printError("error: \(removedUnderADaemon(error) ?? error.description)")
        throw ExitCode(SpoolError.exitCode)
    } catch let error as StartupError {
        printError("error: \(error)")
        throw ExitCode(StartupError.exitCode)
    }
}

/// For a spool file that is missing while a daemon runs on its path (its state file says so): the daemon
/// runs on a file removed under it ("no spool file here; check [spool] path" would send the operator to
/// the configuration).
func removedUnderADaemon(_ error: SpoolError) -> String? {
    guard error.code == .missing, let daemon = DaemonStateFile.read(spoolPath: error.path), daemon.running else { return nil }
    return daemon.state.intakeRefusal?.summary
        ?? "the spool file \(error.path) was removed while the daemon runs (pid \(daemon.state.pid)); restart the daemon"
}

/// `--log-level trace|debug|…|critical`: swift-log's own levels, listed in `--help` and completions.
// swift-format-ignore: AvoidRetroactiveConformances
// swift-log's own levels are the CLI's choices: a wrapper enum would copy them (issue 21).
extension Logger.Level: @retroactive ExpressibleByArgument {}

import ArgumentParser
import Core
import Daemon
import FoundationEssentials
import Glibc
import Logging

/// `definite-agent run`: the daemon, in the foreground.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the agent in the foreground (logs go to stderr, one line per event, as [log] format says).")

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: ArgumentHelp("Overrides [log] level.", valueName: "level"))
    var logLevel: Logger.Level?

    func run() async throws {
        AgentDaemon.catchEarlySignals()
        let (configuration, source) = try global.loadConfiguration()
        let level = logLevel ?? configuration.log.level
        let format = configuration.log.format
        LoggingSystem.bootstrap { _ in AgentLogHandler(format: format, level: level) }
        let logger = Logger(label: "definite-agent")
        logger.info(
            "starting", metadata: ["version": "\(AgentVersion.current)", "commit": "\(AgentVersion.commit)", "config": "\(source)"])
        for warning in ConfigurationWarning.all(in: configuration) {
            logger.warning("\(warning.message)", metadata: ["key": "\(warning.key)"])
        }
        try await reportingErrors {
            try await AgentDaemon(configuration: configuration, configurationPath: global.configurationPath, logger: logger).run()
        }
    }
}

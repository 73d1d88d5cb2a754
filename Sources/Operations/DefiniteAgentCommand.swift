import ArgumentParser
import Core

/// The `definite-agent` command line: the daemon and the operator's tools.
public struct DefiniteAgentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "definite-agent",
        abstract: "A durable local forwarding agent for Definite's Stream API.",
        discussion: """
            Local programs write JSON records to the agent's Unix socket; the agent makes them durable in a \
            SQLite spool at once, acknowledges them, and forwards them to the Stream API.
            """,
        version: AgentVersion.description,
        subcommands: [RunCommand.self, SendCommand.self, StatusCommand.self, DeadLetterCommand.self, QueueCommand.self, ConfigCommand.self]
    )

    public init() {}

    /// Parses the process's arguments and runs the chosen command (the executable's whole body).
    public static func runFromCommandLine() async {
        let main: () async -> Void = Self.main
        await main()
    }
}

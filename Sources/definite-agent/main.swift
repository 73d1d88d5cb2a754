import DefiniteAgent

await DefiniteAgentCommand.runFromCommandLine()

import DefiniteAgent

// Before anything starts a thread (see MemoryTuning.apply).
MemoryTuning.apply()
await DefiniteAgentCommand.runFromCommandLine()

import Core
import Daemon
import Operations

// Before anything starts a thread (see MemoryTuning.apply).
MemoryTuning.apply()
// Before anything awaits: tasks run on the daemon's own threads, not libdispatch's (see GlobalExecutor).
GlobalExecutor.install()
await DefiniteAgentCommand.runFromCommandLine()

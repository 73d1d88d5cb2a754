import Core
import Daemon
import Operations

// Before anything starts a thread (see MemoryTuning.apply).
MemoryTuning.apply()
// Before anything awaits: tasks run on the daemon's own threads, not libdispatch's (see GlobalExecutor).
GlobalExecutor.install()
// `run`: SIGTERM, SIGINT and SIGHUP are caught from here on, not after the arguments are parsed (in
// between, any of them ended the process by signal).
if CommandLine.arguments.dropFirst().first == "run" { AgentDaemon.catchEarlySignals() } else { CommandOutput.checkAtExit() }
await DefiniteAgentCommand.runFromCommandLine()

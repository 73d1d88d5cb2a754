import CAgentSupport
import Glibc

/// SIGINT (Ctrl-C) and SIGTERM as a long-running command sees them: caught, so that the command can say
/// what it did before it ends, and then ending it as the signal asks.
///
/// Once ``catchSignals()`` ran, a signal no longer ends the process: it makes ``descriptor`` readable, so
/// a command that includes it in every `poll` it waits in stops waiting, and the command looks at
/// ``signal`` between its steps. (Any thread may take a signal, so an interrupted system call cannot be
/// relied on.) When the command has said what it must, ``end(by:)`` ends the process by that signal, so a
/// shell sees the command killed by it (a script's `trap` and `$?` work as with any other command).
public enum CommandInterruption {
    /// Catches SIGINT and SIGTERM from here on (a signal inherited as ignored stays ignored).
    public static func catchSignals() {
        _ = cagent_catch_interrupts()
    }

    /// The first SIGINT or SIGTERM caught, if one came.
    public static var signal: Int32? {
        let signal = cagent_interrupt_signal()
        return signal == 0 ? nil : signal
    }

    /// The descriptor to wait on beside the others: it becomes readable at the first signal and stays so
    /// (a wait meant to run after the signal leaves it out); -1 when nothing is caught.
    public static var descriptor: Int32 { cagent_interrupt_descriptor() }

    /// How many SIGINTs and SIGTERMs came in all: a second one means "stop now".
    public static var count: Int { Int(cagent_interrupt_count()) }

    /// The signal's name for messages (`SIGINT`, `SIGTERM`).
    public static func name(of signal: Int32) -> String {
        switch signal {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        default: "signal \(signal)"
        }
    }

    /// Flushes the standard streams and ends the process by `signal`'s default action.
    public static func end(by signal: Int32) -> Never {
        cagent_end_by_signal(signal)
        // Only if the signal did not end the process (it cannot, for SIGINT or SIGTERM at their default).
        exit(128 + signal)
    }
}

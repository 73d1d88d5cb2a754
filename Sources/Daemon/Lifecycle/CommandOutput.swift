import CAgentSupport

/// The commands' standard output, checked once they end.
public enum CommandOutput {
    /// From here on, a command whose output could not be written whole (a full disk behind `> file`,
    /// `> /dev/full`, a closed descriptor) ends with exit code 74 and says so, whatever it would have exited
    /// with: `status --json > f && …` and `status --check | logger` once went on with nothing written.
    /// Call it first thing in `main`, for every command but `run` (the daemon writes to standard error).
    public static func checkAtExit() {
        _ = cagent_check_output_at_exit()
    }

    /// The command said its output failed (and exits 74): the check at exit does not say it again.
    public static func errorReported() {
        cagent_output_error_reported()
    }
}

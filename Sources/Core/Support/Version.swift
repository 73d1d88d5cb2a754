import CAgentSupport

/// The agent's version, reported in `--version`, the HTTP `User-Agent` and the metric
/// `definite_agent_build_info`.
public enum AgentVersion {
    public static let current = "0.1.0"
    /// The commit the binary was built from (`make build` records it), or "unknown".
    public static let commit = String(cString: cagent_build_commit())
    /// The day the binary was built, UTC "YYYY-MM-DD" (`make build` records it), or "unknown".
    public static let buildDate = String(cString: cagent_build_date())
    /// What `definite-agent --version` prints: `0.1.0 (commit 0a695fb, built 2026-01-31)`. The version comes
    /// first, alone before the space, for scripts (`scripts/package-deb` takes it from there).
    public static let description = "\(current) (commit \(commit), built \(buildDate))"
}

import CAgentSupport

/// The agent's version, reported in `--version`, the HTTP `User-Agent` and the metric
/// `definite_agent_build_info`.
public enum AgentVersion {
    public static let current = "0.1.0"
    /// The commit the binary was built from (`make build` records it), or "unknown".
    public static let commit = String(cString: cagent_build_commit())
}

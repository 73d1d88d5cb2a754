/// The agent's version, reported in `--version` and the HTTP `User-Agent`.
public enum AgentVersion {
    public static let current = "0.1.0"
}

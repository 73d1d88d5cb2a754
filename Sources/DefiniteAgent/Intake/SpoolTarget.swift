/// Where records go: a table with its mode, primary key and tags.
///
/// Records of one target are queued, batched and delivered together, in order; two requests naming the
/// same table with different tags are different targets (tags travel with the request to the API).
public struct SpoolTarget: Hashable, Sendable, CustomStringConvertible {
    public var table: String
    public var mode: AgentConfiguration.Mode
    /// The merge key column; empty for append targets.
    public var primaryKey: String
    /// The request's `config.tags` as compact JSON; empty when it had none.
    public var tags: String

    public init(table: String, mode: AgentConfiguration.Mode, primaryKey: String = "", tags: String = "") {
        self.table = table
        self.mode = mode
        self.primaryKey = mode == .merge ? primaryKey : ""
        self.tags = tags
    }

    public var description: String {
        var text = "\(table) (\(mode.rawValue)"
        if !primaryKey.isEmpty { text += " on \(primaryKey)" }
        if !tags.isEmpty { text += ", tags \(tags)" }
        return text + ")"
    }
}

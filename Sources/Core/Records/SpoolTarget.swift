/// Where records go: a table with its mode and primary key.
///
/// Records of one target are queued, batched and delivered together, in order. `tags` is the
/// `config.tags` of the request a record came with: intake keeps them per run of records (requests with
/// different tags share their target); a spool written before version 2 also has targets per tag set.
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

    /// The same table, mode and key, without tags.
    public var withoutTags: SpoolTarget {
        tags.isEmpty ? self : SpoolTarget(table: table, mode: mode, primaryKey: primaryKey)
    }

    public var description: String {
        var text = "\(table) (\(mode.rawValue)"
        if !primaryKey.isEmpty { text += " on \(primaryKey)" }
        if !tags.isEmpty { text += ", tags \(tags)" }
        return text + ")"
    }
}

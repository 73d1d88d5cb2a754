import Core

/// How the operator's commands pick one table's rows out of the spool (`--table`): by the table's
/// canonical name, so `LAKE.ns.table`, `lake.ns.table` and `ns.table` all select the same rows, including
/// those of a target a release before the canonical spelling stored as `LAKE.ns.table`.
enum TableNameFilter {
    /// An SQL condition, true when `column` holds the table bound at `?parameter` in either spelling, and
    /// for every table when the parameter is NULL. Bind ``bound(_:)``.
    static func condition(column: String, parameter: Int) -> String {
        let p = "?\(parameter)"
        // Only a name of three parts starts with the catalog: `lake.events` is table `events` of namespace `lake`.
        return "(\(p) IS NULL OR \(column) = \(p) OR (\(column) LIKE 'lake.%.%' AND substr(\(column), 6) = \(p)))"
    }

    /// What to bind for `table` as the operator typed it: its canonical name.
    static func bound(_ table: String?) -> String? { table.map(TableName.canonical) }
}

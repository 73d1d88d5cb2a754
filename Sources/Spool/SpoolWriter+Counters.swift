extension SpoolWriter {
    /// Adds `deltas` to the spool's running totals (the `counters` table, which `status` shows), in a
    /// commit of their own or one shared with what is queued. `completion` runs on the writer thread once
    /// they are durable, or once the commit failed (the deltas are then lost: counters are a report, not
    /// records).
    package func addToCounters(_ deltas: [(name: String, value: Int)], completion: @escaping @Sendable () -> Void) {
        perform(
            { db in
                let add = try db.prepared(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value")
                for (name, value) in deltas {
                    add.bind(1, name)
                    add.bind(2, value)
                    try add.step()
                    add.reset()
                }
            }, completion: { _ in completion() })
    }
}

extension SpoolWriter {
    /// Adds `deltas` to the spool's running totals (the `counters` table, which `status` shows), in a
    /// commit of their own or one shared with what is queued. `completion` runs on the writer thread once
    /// they are durable, or once the commit failed (the deltas are then lost: counters are a report, not
    /// records).
    package func addToCounters(_ deltas: [(name: String, value: Int)], completion: @escaping @Sendable () -> Void) {
        perform({ db in try Self.add(deltas, db: db) }, completion: { _ in completion() })
    }

    /// Adds `deltas` to the running totals, in the transaction open on `db`.
    static func add(_ deltas: some Sequence<(key: String, value: Int)>, db: SQLiteConnection) throws {
        let add = try db.prepared(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value")
        for (name, value) in deltas where value != 0 {
            add.bind(1, name)
            add.bind(2, value)
            try add.step()
            add.reset()
        }
    }

    static func add(_ deltas: [(name: String, value: Int)], db: SQLiteConnection) throws {
        try add(deltas.lazy.map { (key: $0.name, value: $0.value) }, db: db)
    }
}

/// Requests read together from one connection, their records grouped by target, on their way to the
/// spool writer.
///
/// Records are compact JSON, each followed by `\n`, in the order the connection sent them; the writer
/// appends each target's bytes to that target's log as they are, so per-connection order is kept.
public struct IntakeBatch: Sendable {
    public private(set) var targets: [SpoolTarget] = []
    /// `records[i]` holds the records for `targets[i]`.
    public var records: [[UInt8]] = []
    /// `counts[i]` is the number of records in `records[i]`.
    public var counts: [Int] = []

    public init() {}

    public var isEmpty: Bool { counts.allSatisfy { $0 == 0 } }
    public var totalRecords: Int { counts.reduce(0, +) }
    public var totalBytes: Int { records.reduce(0) { $0 + $1.count } }
    /// Memory the record buffers occupy (their capacity), for ``IntakeMemoryBudget``.
    var allocatedBytes: Int { records.reduce(0) { $0 + $1.capacity } }

    /// The index of `target`'s buffer, creating it on first use.
    mutating func index(for target: SpoolTarget) -> Int {
        if let index = targets.firstIndex(of: target) { return index }
        targets.append(target)
        records.append([])
        counts.append(0)
        return targets.count - 1
    }
}

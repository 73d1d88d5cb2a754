import Core

/// Records on their way to the spool writer, grouped by target: intake fills one with the requests it
/// read together from one connection, and the writer commits it as a whole.
///
/// Records are compact JSON, each followed by `\n`, in the order the connection sent them; the writer
/// appends each target's bytes to that target's log as they are, so per-connection order is kept.
/// A target is a table with its mode and key: requests with different `config.tags` go to the same
/// target (so they keep their order, and are batched together), their tags kept as runs of records.
public struct SpoolBatch: Sendable {
    /// Targets without tags.
    public private(set) var targets: [SpoolTarget] = []
    /// `records[i]` holds the records for `targets[i]`.
    public var records: [[UInt8]] = []
    /// `counts[i]` is the number of records in `records[i]`.
    public var counts: [Int] = []
    /// `tagRuns[i]`: where in `records[i]` the records written with other tags start; records before the
    /// first run have none. A run may be empty (a line refused after its tags were noted).
    public private(set) var tagRuns: [[TagRun]] = []
    /// Running totals of the spool's `counters` table to add in the same commit as these records (the
    /// datagram counts of the burst they came in), so the totals and the records can never disagree.
    public var counters: [String: Int] = [:]

    /// Records from `record` (and byte `offset`) on were written with `tags` (compact JSON; empty: none),
    /// up to the next run.
    public struct TagRun: Sendable, Equatable {
        public var record: Int
        public var offset: Int
        public var tags: String
    }

    public init() {}

    public var isEmpty: Bool { counts.allSatisfy { $0 == 0 } }
    public var totalRecords: Int { counts.reduce(0, +) }
    public var totalBytes: Int { records.reduce(0) { $0 + $1.count } }
    /// Memory the record buffers occupy (their capacity), for ``IntakeMemoryBudget``.
    package var allocatedBytes: Int { records.reduce(0) { $0 + $1.capacity } }

    /// The index of `target`'s buffer (its table, mode and key), creating it on first use; the records
    /// appended next carry `target`'s tags.
    package mutating func index(for target: SpoolTarget) -> Int {
        let key = target.withoutTags
        let index: Int
        if let found = targets.firstIndex(of: key) {
            index = found
        } else {
            targets.append(key)
            records.append([])
            counts.append(0)
            tagRuns.append([])
            index = targets.count - 1
        }
        if target.tags != (tagRuns[index].last?.tags ?? "") {
            tagRuns[index].append(TagRun(record: counts[index], offset: records[index].count, tags: target.tags))
        }
        return index
    }

    /// Keeps the request just appended to group `index` (its `bytes` bytes and `records` records, the last
    /// ones there) if `capacity` has room for it, and reserves that room; otherwise takes it out of the
    /// batch again and returns `false` (the request is refused with nothing of it stored). The one place
    /// intake reserves room: the writer settles the reservation when it commits the batch.
    package mutating func admitLast(bytes: Int, records count: Int, group index: Int, into capacity: SpoolCapacity) -> Bool {
        guard capacity.reserve(bytes) else {
            records[index].removeLast(bytes)
            counts[index] -= count
            return false
        }
        return true
    }

    /// Group `index`'s records as runs of one tag set: (byte range in `records[index]`, record count, tags),
    /// in order, empty runs left out.
    package func runs(of index: Int) -> [(bytes: Range<Int>, count: Int, tags: String)] {
        var starts = [TagRun(record: 0, offset: 0, tags: "")] + tagRuns[index]
        starts.append(TagRun(record: counts[index], offset: records[index].count, tags: ""))
        return zip(starts, starts.dropFirst()).compactMap { run, next in
            next.record > run.record ? (run.offset..<next.offset, next.record - run.record, run.tags) : nil
        }
    }
}

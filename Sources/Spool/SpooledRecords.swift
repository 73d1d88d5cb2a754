/// Records read back from a target's log: their bytes in one buffer, and each record's seq and span.
///
/// One contiguous buffer rather than an array per record keeps a 50,000-row batch to two allocations.
/// Records are separated by commas, so all but the last byte of ``bytes`` is exactly the inside of a
/// JSON request's `data` array: the common request is sent without building its body.
public struct SpooledRecords: Sendable {
    /// Records, each followed by `,`.
    public var bytes: [UInt8] = []
    public var seqs: [Int64] = []
    /// `ranges[i]` is record `i` in `bytes`, without its newline.
    public var ranges: [Range<Int>] = []
    /// Where records written with other `config.tags` start; records before the first run have none.
    public var tagRuns: [TagRun] = []

    /// Records from index `first` on were written with `tags` (compact JSON; empty: none), up to the next run.
    public struct TagRun: Sendable, Equatable {
        public var first: Int
        public var tags: String
    }

    public init() {}

    /// Whether the rows' bytes are here (``releaseBytes()`` drops them).
    public private(set) var holdsBytes = true

    /// Drops the rows' bytes, keeping their seqs, sizes and tags: enough to account for rows delivered,
    /// not to send them or dead-letter them again.
    package mutating func releaseBytes() {
        bytes = []
        holdsBytes = false
    }

    /// Memory these records hold, roughly.
    package var footprint: Int { bytes.capacity + seqs.capacity * 8 + ranges.capacity * 16 }

    public var count: Int { seqs.count }
    public var isEmpty: Bool { seqs.isEmpty }

    package mutating func append(seq: Int64, _ record: UnsafeRawBufferPointer, tags: String = "") {
        if tags != (tagRuns.last?.tags ?? "") { tagRuns.append(TagRun(first: count, tags: tags)) }
        let start = bytes.count
        bytes.append(contentsOf: record)
        ranges.append(start..<bytes.count)
        bytes.append(UInt8(ascii: ","))
        seqs.append(seq)
    }

    /// The records as the spool stores them: each followed by `\n` (for NDJSON and dead letters).
    package var newlineSeparated: [UInt8] {
        var copy = bytes
        for range in ranges { copy[range.upperBound] = UInt8(ascii: "\n") }
        return copy
    }

    /// The stored size of record `i`, separator included (what it counts for in `pending_bytes`).
    package func storedSize(_ i: Int) -> Int { ranges[i].count + 1 }

    package func record(_ i: Int) -> ArraySlice<UInt8> { bytes[ranges[i]] }

    /// The index of the record with `seq` (seqs are ascending), if it is here.
    package func index(of seq: Int64) -> Int? {
        var low = 0
        var high = seqs.count
        while low < high {
            let middle = (low + high) / 2
            if seqs[middle] < seq { low = middle + 1 } else { high = middle }
        }
        return low < seqs.count && seqs[low] == seq ? low : nil
    }

    /// A new value holding only the records at `indexes`, in that order, with their tags.
    package func subset(_ indexes: some Sequence<Int>) -> SpooledRecords {
        var result = SpooledRecords()
        bytes.withUnsafeBytes { raw in
            for i in indexes {
                result.append(seq: seqs[i], UnsafeRawBufferPointer(rebasing: raw[ranges[i]]), tags: tags(of: i))
            }
        }
        return result
    }

    /// The tags record `i` was written with (compact JSON; empty: none).
    package func tags(of i: Int) -> String {
        guard let first = tagRuns.first, i >= first.first else { return "" }
        var low = 0
        var high = tagRuns.count
        while high - low > 1 {
            let middle = (low + high) / 2
            if tagRuns[middle].first <= i { low = middle } else { high = middle }
        }
        return tagRuns[low].tags
    }

    /// Runs of records with the same tags, as `[{"from":i,"to":j,"tags":{…}}]` over these records (runs
    /// without tags left out); empty when no record has tags.
    package var tagRunsJSON: String {
        var runs: [String] = []
        for (index, run) in tagRuns.enumerated() where !run.tags.isEmpty {
            let end = index + 1 < tagRuns.count ? tagRuns[index + 1].first : count
            if end > run.first { runs.append("{\"from\":\(run.first),\"to\":\(end),\"tags\":\(run.tags)}") }
        }
        return runs.isEmpty ? "" : "[" + runs.joined(separator: ",") + "]"
    }
}

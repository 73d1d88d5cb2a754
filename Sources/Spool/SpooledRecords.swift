/// Records read back from a target's log: their bytes in one buffer, and each record's seq and span.
///
/// One contiguous buffer rather than an array per record keeps a 50,000-row batch to two allocations.
/// Each record is followed by ``separator``, chosen for the body the records are read for: with `,` all
/// but the last byte of ``bytes`` is exactly the inside of a JSON request's `data` array, with `\n` the
/// whole of an NDJSON body, so the common request is sent without building its body.
public struct SpooledRecords: Sendable {
    /// Records, each followed by ``separator``.
    public var bytes: [UInt8] = []
    /// What follows each record in ``bytes``: `,` (JSON bodies, the default) or `\n` (NDJSON).
    public private(set) var separator = UInt8(ascii: ",")
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

    /// Records to be followed by `separator` (`,` or `\n`), their bytes written into `storage` (emptied, its
    /// capacity kept when nothing else holds it) rather than into a buffer of their own.
    package init(separator: UInt8, storage: consuming [UInt8] = []) {
        self.separator = separator
        bytes = consume storage
        bytes.removeAll(keepingCapacity: true)
    }

    /// Whether the rows' bytes are here (``releaseBytes()`` drops them).
    public private(set) var holdsBytes = true

    /// Drops the rows' bytes, keeping their seqs, sizes and tags: enough to account for rows delivered,
    /// not to send them or dead-letter them again. Returns the buffer that held them, for reuse.
    @discardableResult
    package mutating func releaseBytes() -> [UInt8] {
        defer {
            bytes = []
            holdsBytes = false
        }
        return bytes
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
        bytes.append(separator)
        seqs.append(seq)
    }

    /// The records as the spool stores them: each followed by `\n` (for NDJSON and dead letters); no copy
    /// when that is already their separator.
    package var newlineSeparated: [UInt8] { separated(by: UInt8(ascii: "\n")) }

    /// The records each followed by `,` (a JSON body's `data`, less the last byte); no copy when that is
    /// already their separator.
    package var commaSeparated: [UInt8] { separated(by: UInt8(ascii: ",")) }

    private func separated(by wanted: UInt8) -> [UInt8] {
        guard wanted != separator else { return bytes }
        var copy = bytes
        for range in ranges { copy[range.upperBound] = wanted }
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
        var result = SpooledRecords(separator: separator)
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

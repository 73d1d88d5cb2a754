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

    public init() {}

    public var count: Int { seqs.count }
    public var isEmpty: Bool { seqs.isEmpty }

    mutating func append(seq: Int64, _ record: UnsafeRawBufferPointer) {
        let start = bytes.count
        bytes.append(contentsOf: record)
        ranges.append(start..<bytes.count)
        bytes.append(UInt8(ascii: ","))
        seqs.append(seq)
    }

    /// The records as the spool stores them: each followed by `\n` (for NDJSON and dead letters).
    var newlineSeparated: [UInt8] {
        var copy = bytes
        for range in ranges { copy[range.upperBound] = UInt8(ascii: "\n") }
        return copy
    }

    /// The stored size of record `i`, separator included (what it counts for in `pending_bytes`).
    func storedSize(_ i: Int) -> Int { ranges[i].count + 1 }

    func record(_ i: Int) -> ArraySlice<UInt8> { bytes[ranges[i]] }

    /// The index of the record with `seq` (seqs are ascending), if it is here.
    func index(of seq: Int64) -> Int? {
        var low = 0
        var high = seqs.count
        while low < high {
            let middle = (low + high) / 2
            if seqs[middle] < seq { low = middle + 1 } else { high = middle }
        }
        return low < seqs.count && seqs[low] == seq ? low : nil
    }

    /// A new value holding only the records at `indexes`, in that order.
    func subset(_ indexes: some Sequence<Int>) -> SpooledRecords {
        var result = SpooledRecords()
        bytes.withUnsafeBytes { raw in
            for i in indexes {
                result.append(seq: seqs[i], UnsafeRawBufferPointer(rebasing: raw[ranges[i]]))
            }
        }
        return result
    }
}

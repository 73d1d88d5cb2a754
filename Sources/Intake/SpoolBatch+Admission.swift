import Spool

extension SpoolBatch {
    /// Keeps the request `parse` just put in this batch if the spool has room for it (see
    /// ``SpoolBatch/admitLast(bytes:records:group:into:)``); otherwise it is taken out again.
    mutating func admit(_ accepted: ParsedLine.Accepted, into capacity: SpoolCapacity) -> Bool {
        admitLast(bytes: accepted.bytes, records: accepted.records, group: accepted.targetIndex, into: capacity)
    }
}

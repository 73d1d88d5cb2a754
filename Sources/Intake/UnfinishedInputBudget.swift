import Core
import Synchronization

/// Input that connections hold before they can handle it, across every listener: the start of a line
/// whose newline has not arrived (and lines read past a burst's limit), a local Stream API request body
/// not yet complete.
///
/// Each is bounded per connection (`[intake] max_line_bytes`, the API's 10 MB body), but not the number
/// of connections: without this bound, a hundred writers each in the middle of a long line held over a
/// gigabyte. (Batches handed to the spool writer have their own bound, ``IntakeMemoryBudget``.)
///
/// A connection whose unfinished input would take the total past its limit (``limit(maxLineBytes:)``, for
/// the `[intake] max_line_bytes` it was opened with) is refused rather than made to wait: waiting
/// connections would each hold bytes the others need, and none could finish. The line or request that did
/// not fit is answered `busy` (503: nothing of it was stored, retry) and its connection closes; the others
/// are not disturbed.
package final class UnfinishedInputBudget: Sendable {
    /// The default: room for several maximum lines or bodies at once, far above what writers of ordinary
    /// records hold (a few KiB per connection).
    static let defaultLimit = 64 << 20

    /// The limit for a connection whose lines may be `maxLineBytes` long: the default, or room for two of
    /// the longest lines or bodies when `[intake] max_line_bytes` was raised past a quarter of it (a reload
    /// that raises it applies to the connections opened after).
    package func limit(maxLineBytes: Int) -> Int {
        fixedLimit ?? max(Self.defaultLimit, 2 * max(maxLineBytes, StreamAPILimits.maxBodyBytes))
    }

    private let fixedLimit: Int?
    private let held = Atomic<Int>(0)

    /// A budget shared by the connections given it; `fixedLimit` replaces ``limit(maxLineBytes:)`` (for tests).
    package init(fixedLimit: Int? = nil) {
        self.fixedLimit = fixedLimit
    }

    /// Bytes of unfinished input held now, by every connection.
    package var heldBytes: Int { held.load(ordering: .relaxed) }

    /// Counts `bytes` more for a connection; `false`, counting nothing, if the total would pass `limit`.
    func take(_ bytes: Int, limit: Int) -> Bool {
        var current = held.load(ordering: .relaxed)
        while true {
            guard current + bytes <= limit else { return false }
            let (exchanged, original) = held.compareExchange(
                expected: current, desired: current + bytes, successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Counts `bytes` fewer: input a connection handled, refused or dropped.
    func give(_ bytes: Int) {
        held.subtract(bytes, ordering: .relaxed)
    }
}

/// One connection's share of an ``UnfinishedInputBudget``: what it holds now, given back whole when the
/// connection ends. Owned by the connection's handler, on its event loop.
struct UnfinishedInputShare {
    let budget: UnfinishedInputBudget
    /// The total this connection may take the budget to.
    let limit: Int
    private(set) var bytes = 0

    init(of budget: UnfinishedInputBudget, maxLineBytes: Int) {
        self.budget = budget
        self.limit = budget.limit(maxLineBytes: maxLineBytes)
    }

    /// Makes the share `bytes`; `false`, with the share unchanged, if the budget has no room for the growth.
    mutating func resize(to bytes: Int) -> Bool {
        if bytes > self.bytes {
            guard budget.take(bytes - self.bytes, limit: limit) else { return false }
        } else if bytes < self.bytes {
            budget.give(self.bytes - bytes)
        }
        self.bytes = bytes
        return true
    }

    /// Gives everything back.
    mutating func release() {
        _ = resize(to: 0)
    }
}

import NIOConcurrencyHelpers
import NIOCore

/// Memory held by intake batches waiting for their commit, across every connection: the bound that keeps
/// the daemon's memory independent of how many writers are connected.
///
/// Each connection already holds at most ``IntakeConnectionHandler/maxOutstandingBatches`` read bursts,
/// but that bound grows with the number of connections (64 pipelining writers held over 100 MiB).
/// With this budget a connection whose burst would start while the batches in flight already hold
/// `limit` bytes is not read until commits free room; it is then woken on its own event loop. Bursts
/// are parsed inside one event-loop tick, so what is not yet counted is at most one burst per loop.
///
/// Nothing is refused because of the budget: writers only wait, as they do for a slow disk.
final class IntakeMemoryBudget: Sendable {
    /// The default. One group commit takes what is queued, so 4 MiB (about 20,000 records of 200 bytes)
    /// in flight keeps the writer as busy as more would: the bench measured the same rate with 8 clients
    /// at 4 MiB as without a budget, and 64 clients went from 116 to 68 MiB peak RSS.
    static let defaultLimit = 4 << 20

    let limit: Int
    private let state = NIOLockedValueBox(State())

    private struct State {
        var held = 0
        var waiting: [@Sendable () -> Void] = []
    }

    init(limit: Int = IntakeMemoryBudget.defaultLimit) {
        self.limit = limit
    }

    /// Bytes held by batches in flight now.
    var heldBytes: Int { state.withLockedValue { $0.held } }

    /// `true` if a new burst may be read now. Otherwise the closure `makeWake` returns is kept and called
    /// once (from whichever thread releases the bytes) when the budget has room again; the caller hops to
    /// its event loop. `makeWake` runs only then, so an admitted read allocates nothing.
    func admitOrWait(_ makeWake: () -> @Sendable () -> Void) -> Bool {
        state.withLockedValue { state in
            if state.held < limit { return true }
            state.waiting.append(makeWake())
            return false
        }
    }

    /// A batch of `bytes` was handed to the spool writer.
    func hold(_ bytes: Int) {
        state.withLockedValue { $0.held += bytes }
    }

    /// The batch's commit ended (either way): its bytes are free; waiting connections are woken if there
    /// is room.
    func release(_ bytes: Int) {
        let woken: [@Sendable () -> Void] = state.withLockedValue { state in
            state.held -= bytes
            guard state.held < limit, !state.waiting.isEmpty else { return [] }
            defer { state.waiting.removeAll() }
            return state.waiting
        }
        for wake in woken { wake() }
    }
}

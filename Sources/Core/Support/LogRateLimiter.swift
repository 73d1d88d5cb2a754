import Synchronization

/// Lets at most one log line per `interval` through for one kind of event, and counts the lines it held
/// back, so a flood (a writer sending bad requests it never reads answers to) costs a line a second.
package final class LogRateLimiter: Sendable {
    private struct State {
        var lastLine: ContinuousClock.Instant?
        var heldBack = 0
    }

    private let interval: Duration
    private let state = Mutex(State())

    package init(interval: Duration) {
        self.interval = interval
    }

    /// `nil` when this line is to be held back; otherwise how many were held back since the last line let
    /// through (to say so in this one).
    package func admit(now: ContinuousClock.Instant = .now) -> Int? {
        state.withLock { state in
            if let last = state.lastLine, now - last < interval {
                state.heldBack += 1
                return nil
            }
            defer { state = State(lastLine: now) }
            return state.heldBack
        }
    }
}

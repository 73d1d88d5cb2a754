import Synchronization

/// Something that happens once (a thread ended, connections drained, a commit landed), signalled from any
/// thread and awaited from async code, with a deadline.
///
/// Waiting never blocks a thread (no semaphore on the cooperative pool), gives up at the deadline, and
/// gives up at once when the waiting task is cancelled. With `count` > 1 it is a countdown: it happens
/// at the `count`-th ``signal()``, e.g. when the last of several threads ended.
package final class CompletionSignal: Sendable {
    private struct State {
        var remaining: Int
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        /// Waiters cancelled before they could park their continuation.
        var cancelled: Set<Int> = []
        var nextWaiter = 0
    }

    private let state: Mutex<State>

    package init(count: Int = 1) {
        precondition(count > 0, "a completion needs something to wait for")
        state = Mutex(State(remaining: count))
    }

    package var hasHappened: Bool { state.withLock { $0.remaining == 0 } }

    /// One of the `count` things happened; at the last, every waiter resumes.
    package func signal() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard state.remaining > 0 else { return [] }
            state.remaining -= 1
            guard state.remaining == 0 else { return [] }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until it happened, `deadline` passed (`nil`: no deadline) or the task is cancelled; returns
    /// whether it happened.
    package func wait(until deadline: ContinuousClock.Instant? = nil) async -> Bool {
        if hasHappened { return true }
        guard let deadline else {
            await waitUnlessCancelled()
            return hasHappened
        }
        return await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitUnlessCancelled() }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            await group.next()
            group.cancelAll()
            return hasHappened
        }
    }

    private func waitUnlessCancelled() async {
        let id = state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if state.remaining == 0 || state.cancelled.remove(id) != nil { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                if let waiter = state.waiters.removeValue(forKey: id) { return Optional(waiter) }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume()
        }
    }
}

import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Intake refusal: capacity, tracker, readiness")
struct IntakeRefusalTests {
    /// Issue 17: a full spool shows from the first refused request until that request would fit again,
    /// not only while requests keep arriving.
    @Test func maxBytesRefusalLastsUntilTheRefusedRequestWouldFit() throws {
        let capacity = SpoolCapacity(limit: 100, used: 60)
        #expect(capacity.refusal == nil && capacity.observe().episodes == 0)
        #expect(capacity.reserve(30))
        capacity.commitReservation(30)
        #expect(!capacity.reserve(20))
        let refusal = try #require(capacity.refusal)
        #expect(refusal.reason == .maxBytes && refusal.detail.contains("max_bytes = 100"))
        #expect(capacity.observe().episodes == 1)
        capacity.storedChanged(by: -5)  // 85 + 20 > 100: that request still would not fit
        #expect(capacity.refusal?.since == refusal.since)
        capacity.storedChanged(by: -10)  // 75 + 20 ≤ 100
        #expect(capacity.refusal == nil)
        #expect(capacity.observe() == .init(current: nil, episodes: 1, latest: capacity.observe().latest))
    }

    @Test func theDiskRefusalComesFirstAndEndsWhenTheWriterSaysSo() {
        let capacity = SpoolCapacity(limit: 100)
        capacity.diskIsFull("1 MiB free, 64 MiB kept for delivery")
        capacity.diskIsFull("0.9 MiB free, 64 MiB kept for delivery")
        #expect(capacity.refusal?.reason == .diskReserve && capacity.refusal?.detail.hasPrefix("0.9 MiB") == true)
        #expect(capacity.observe().episodes == 1)
        capacity.diskHasRoom()
        #expect(capacity.refusal == nil)
    }

    @Test func theTrackerReportsEachBeginningAndEndOnce() throws {
        let capacity = SpoolCapacity(limit: 100, used: 100)
        var tracker = RefusalTracker()
        let now = Date()
        #expect(tracker.observe(capacity.observe(), now: now).isEmpty)
        #expect(!capacity.reserve(10))
        let began = tracker.observe(capacity.observe(), now: now)
        guard case .began(let refusal)? = began.first, began.count == 1 else {
            Issue.record("expected one beginning, got \(began)")
            return
        }
        #expect(!capacity.reserve(10))
        #expect(tracker.observe(capacity.observe(), now: now).isEmpty, "a refusal going on is not reported again")
        capacity.storedChanged(by: -50)
        #expect(tracker.observe(capacity.observe(), now: now + 3) == [.ended(refusal, lasted: (now + 3).timeIntervalSince(refusal.since))])
        #expect(tracker.observe(capacity.observe(), now: now + 4).isEmpty)
    }

    @Test func aRefusalBetweenTwoLooksIsStillReported() {
        let capacity = SpoolCapacity(limit: 100, used: 100)
        var tracker = RefusalTracker()
        _ = tracker.observe(capacity.observe(), now: Date())
        capacity.diskIsFull("little free")
        capacity.diskHasRoom()
        let transitions = tracker.observe(capacity.observe(), now: Date())
        #expect(transitions.count == 2)
        if case .began(let refusal)? = transitions.first { #expect(refusal.reason == .diskReserve) } else { Issue.record("\(transitions)") }
        if case .ended? = transitions.last {} else { Issue.record("\(transitions)") }
        #expect(tracker.current == nil)
    }

    @Test func readinessNeedsListenersAndRoomAndEndsWhenStopping() {
        let capacity = SpoolCapacity(limit: 100, used: 100)
        let readiness = IntakeReadiness(capacity: capacity)
        guard case .notReady(let starting) = readiness.state else {
            Issue.record("ready before listening")
            return
        }
        #expect(starting.contains("starting"))
        readiness.markListening()
        #expect(readiness.state == .ready)
        _ = capacity.reserve(1)
        guard case .notReady(let full) = readiness.state else {
            Issue.record("ready while refusing")
            return
        }
        #expect(full.hasPrefix("intake refused: spool full"))
        capacity.storedChanged(by: -10)
        #expect(readiness.state == .ready)
        readiness.markStopping()
        #expect(readiness.state == .notReady("stopping"))
        #expect(HealthEndpoint.answer(path: "/healthz", readiness: readiness)?.status == 200)
        #expect(HealthEndpoint.answer(path: "/readyz", readiness: readiness)?.status == 503)
        #expect(HealthEndpoint.answer(path: "/v2/stream", readiness: readiness) == nil)
    }
}

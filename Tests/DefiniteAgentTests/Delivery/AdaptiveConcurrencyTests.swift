import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("AdaptiveConcurrency")
struct AdaptiveConcurrencyTests {
    let start = ContinuousClock.now
    let rtt = Duration.milliseconds(150)

    /// Answers `count` requests with `signal` after `roundTrip`, as if the limit were in use.
    func answer(
        _ limiter: inout AdaptiveConcurrency, _ signal: AdaptiveConcurrency.Signal, count: Int,
        roundTrip: Duration, from: Duration = .zero, spacing: Duration = .milliseconds(10)
    ) {
        for i in 0..<count {
            limiter.record(signal, roundTrip: roundTrip, saturated: true, now: start + from + spacing * i)
        }
    }

    @Test func itDoublesEachRoundTripInSlowStartWhileLatencyStaysFlatAndStopsAtTheCeiling() {
        var limiter = AdaptiveConcurrency(ceiling: 64, initial: 8)
        answer(&limiter, .answered, count: 8, roundTrip: rtt)
        #expect(limiter.limit == 16)
        answer(&limiter, .answered, count: 16, roundTrip: rtt)
        #expect(limiter.limit == 32)
        answer(&limiter, .answered, count: 200, roundTrip: rtt)
        #expect(limiter.limit == 64)
    }

    @Test func itDoesNotGrowWhenTheLimitIsNotInUse() {
        var limiter = AdaptiveConcurrency(ceiling: 64, initial: 8)
        for i in 0..<100 { limiter.record(.answered, roundTrip: rtt, saturated: false, now: start + .milliseconds(i)) }
        #expect(limiter.limit == 8)
    }

    @Test func backPressureHalvesItOncePerRoundTripThenItGrowsByOnePerRoundTrip() {
        var limiter = AdaptiveConcurrency(ceiling: 64, initial: 32)
        answer(&limiter, .answered, count: 1, roundTrip: rtt)
        let grown = limiter.limit
        // A burst of 429s for requests in flight together counts once.
        answer(&limiter, .backPressure, count: 10, roundTrip: rtt, from: .seconds(1), spacing: .milliseconds(1))
        #expect(limiter.limit == grown / 2)
        // A round trip later it may halve again.
        limiter.record(.backPressure, roundTrip: rtt, saturated: true, now: start + .seconds(2))
        #expect(limiter.limit == grown / 4)
        // Congestion avoidance: one more per round trip's worth of answers.
        let before = limiter.limit
        answer(&limiter, .answered, count: before, roundTrip: rtt, from: .seconds(3))
        #expect(limiter.limit == before + 1)
    }

    @Test func risingLatencyShrinksItByATenth() {
        var limiter = AdaptiveConcurrency(ceiling: 64, initial: 40)
        answer(&limiter, .answered, count: 5, roundTrip: rtt)
        let before = limiter.limit
        limiter.record(.answered, roundTrip: .milliseconds(600), saturated: true, now: start + .seconds(1))
        #expect(limiter.limit == before - before / 10)
        // Noise of a few milliseconds on a fast API is not a rise.
        var fast = AdaptiveConcurrency(ceiling: 64, initial: 8)
        answer(&fast, .answered, count: 3, roundTrip: .milliseconds(1))
        let limit = fast.limit
        fast.record(.answered, roundTrip: .milliseconds(5), saturated: true, now: start + .seconds(1))
        #expect(fast.limit == limit + 1)
    }

    @Test func itStaysBetweenOneAndTheCeiling() {
        var limiter = AdaptiveConcurrency(ceiling: 4, initial: 100)
        #expect(limiter.limit == 4)
        for i in 0..<20 { limiter.record(.backPressure, roundTrip: rtt, saturated: true, now: start + .seconds(i)) }
        #expect(limiter.limit == 1)
        #expect(AdaptiveConcurrency(ceiling: 0).limit == 1)
    }
}

import Core

/// Exponential backoff with full jitter, per target: attempt `n` waits a uniformly random time between
/// `initial` and `min(max, initial × 2ⁿ)`, so many agents recovering from one outage do not retry in step.
struct RetryPolicy: Sendable {
    var initial: HumanDuration
    var max: HumanDuration

    init(_ retry: AgentConfiguration.Retry) {
        initial = retry.initial
        max = retry.max
    }

    func delay<G: RandomNumberGenerator>(attempt: Int, using generator: inout G) -> Duration {
        let base = Double(initial.milliseconds)
        let cap = Swift.min(Double(max.milliseconds), base * pow2(attempt))
        let milliseconds = cap <= base ? base : Double.random(in: base...cap, using: &generator)
        return .milliseconds(Int64(milliseconds))
    }

    func delay(attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(attempt: attempt, using: &generator)
    }

    private func pow2(_ n: Int) -> Double { n >= 62 ? Double.greatestFiniteMagnitude : Double(1 << Swift.max(0, n)) }
}

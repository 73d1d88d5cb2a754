/// How many requests may be in flight to the API at once, adapted to how it answers, in the spirit of
/// Vector's adaptive request concurrency (ARC). Pure: the caller reports each answer and the time.
///
/// - It grows while answers come back and their round trip stays near its usual value, and only while the
///   limit is in use: by one per answer in slow start (so it doubles each round trip), then by one per
///   round trip.
/// - It halves on back-pressure (429, any 5xx, a timeout or no answer at all), at most once per round
///   trip, since the requests already in flight answer for the same moment.
/// - It shrinks by a tenth when round trips rise to more than twice their usual value: the API is queueing.
/// - It stays between 1 and ``ceiling`` (`[batch] max_in_flight`).
struct AdaptiveConcurrency: Sendable, Equatable {
    /// What an answer says about the API's load.
    enum Signal: Sendable {
        /// An answer that is not back-pressure (whatever it says about the rows).
        case answered
        /// 429, a 5xx, a timeout, no answer.
        case backPressure
    }

    let ceiling: Int
    private(set) var limit: Int
    private var slowStart = true
    /// The usual round trip, in seconds: a moving average of answered requests.
    private(set) var baseline: Double?
    /// Growth owed in congestion avoidance, in requests (one whole request per round trip).
    private var credit = 0.0
    private var lastDecrease: ContinuousClock.Instant?

    /// Round trips rising above this many times the usual one count as the API queueing.
    static let latencyRise = 2.0
    /// ... and by at least this much (a few milliseconds either way is noise).
    static let latencyNoise = 0.010

    init(ceiling: Int, initial: Int = 16) {
        self.ceiling = max(1, ceiling)
        self.limit = min(max(1, initial), self.ceiling)
    }

    /// Takes in one finished request: what its answer says, how long it took, and whether the limit was in
    /// use when it was sent (as many requests in flight as allowed: more would have gone).
    mutating func record(_ signal: Signal, roundTrip: Duration, saturated: Bool, now: ContinuousClock.Instant) {
        let seconds = roundTrip.seconds
        switch signal {
        case .backPressure:
            decrease(to: limit / 2, now: now)
        case .answered:
            guard let usual = baseline else {
                baseline = seconds
                grow(saturated: saturated)
                return
            }
            if seconds > usual * Self.latencyRise, seconds - usual > Self.latencyNoise {
                decrease(to: limit - max(1, limit / 10), now: now)
                baseline = usual * 0.95 + seconds * 0.05
                return
            }
            baseline = usual * 0.9 + seconds * 0.1
            grow(saturated: saturated)
        }
    }

    private mutating func grow(saturated: Bool) {
        guard saturated, limit < ceiling else { return }
        if slowStart {
            limit += 1
            return
        }
        credit += 1 / Double(limit)
        if credit >= 1 {
            credit -= 1
            limit += 1
        }
    }

    private mutating func decrease(to value: Int, now: ContinuousClock.Instant) {
        let roundTrip = Duration.milliseconds(Int64(max(baseline ?? 0.05, 0.05) * 1000))
        if let last = lastDecrease, now - last < roundTrip { return }
        lastDecrease = now
        slowStart = false
        credit = 0
        limit = max(1, min(limit, value))
    }
}

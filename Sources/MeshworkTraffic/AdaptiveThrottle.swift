/// Client-side adaptive throttling (Beyer et al., "Site Reliability Engineering", chapter
/// 21, "Handling Overload"): each client remembers, over the last two minutes, how many
/// requests it attempted and how many the backend accepted, and rejects new ones locally
/// with probability
///
///     max(0, (requests − K × accepts) / (requests + 1))
///
/// so once a backend refuses most of what it gets, its clients stop sending most of it
/// and it recovers, instead of spending its capacity on refusals. K = 2 lets the backend
/// see up to twice what it accepts.
public struct AdaptiveThrottle: Sendable {
    public let k: Double
    private var requests: SlidingWindowCounter
    private var accepts: SlidingWindowCounter

    public init(k: Double = 2, window: Duration = .seconds(120)) {
        self.k = k
        self.requests = SlidingWindowCounter(window: window, buckets: 24)
        self.accepts = SlidingWindowCounter(window: window, buckets: 24)
    }

    /// The current local rejection probability.
    public func rejectionProbability(now: UInt64) -> Double {
        let requests = requests.total(now: now)
        return max(0, (requests - k * accepts.total(now: now)) / (requests + 1))
    }

    /// Counts an attempt and decides whether to reject it locally.
    public mutating func shouldReject(now: UInt64, using random: inout some RandomNumberGenerator) -> Bool {
        let probability = rejectionProbability(now: now)
        requests.add(now: now)
        return probability > 0 && Double.random(in: 0..<1, using: &random) < probability
    }

    /// The backend accepted a request (answered anything but an overload refusal).
    public mutating func recordAccept(now: UInt64) {
        accepts.add(now: now)
    }
}

/// Power of two choices over peak-EWMA loads (Mitzenmacher, "The Power of Two Choices in
/// Randomized Load Balancing"; the default balancer of Linkerd and Finagle): pick two
/// distinct endpoints at random and send to the one with the lower load. It never sends to
/// the worse of the two, so the slowest endpoint of three or more gets no traffic, and it
/// needs no global view, only each endpoint's own estimate.
///
/// Randomness is injected (`R`), so tests and simulations are reproducible.
public struct P2CBalancer<R: RandomNumberGenerator> {
    public private(set) var endpoints: [PeakEWMA]
    /// Relative capacity of each endpoint (instance weight); load is divided by it.
    public var weights: [Double]
    private var random: R

    public init(count: Int, weights: [Double]? = nil, random: R, now: UInt64) {
        self.endpoints = Array(repeating: PeakEWMA(now: now), count: count)
        self.weights = weights ?? Array(repeating: 1, count: count)
        precondition(self.weights.count == count, "one weight per endpoint")
        self.random = random
    }

    /// The endpoint to send the next request to, or nil when there is none.
    public mutating func pick(now: UInt64) -> Int? {
        switch endpoints.count {
        case 0: return nil
        case 1: return 0
        default:
            let a = Int.random(in: 0..<endpoints.count, using: &random)
            var b = Int.random(in: 0..<(endpoints.count - 1), using: &random)
            if b >= a { b += 1 }
            let loadA = endpoints[a].load(at: now, weight: weights[a])
            let loadB = endpoints[b].load(at: now, weight: weights[b])
            return loadB < loadA ? b : a
        }
    }

    public mutating func requestStarted(_ index: Int) {
        endpoints[index].requestStarted()
    }

    public mutating func requestFinished(_ index: Int, rtt: Duration, now: UInt64) {
        endpoints[index].requestFinished(rtt: rtt, now: now)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable generator for balancers
/// and simulations that must be reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        self.state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

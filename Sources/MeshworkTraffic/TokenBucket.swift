/// A token bucket rate limit: `rate` tokens per second accrue up to `burst`; each request
/// takes one, and finds none when it comes faster than the rate for longer than the
/// burst allows.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    public private(set) var tokens: Double
    private var stamp: UInt64

    public init(rate: Double, burst: Double, now: UInt64) {
        self.rate = max(0, rate)
        self.burst = max(1, burst)
        self.tokens = self.burst
        self.stamp = now
    }

    public mutating func tryTake(now: UInt64) -> Bool {
        if now > stamp {
            tokens = min(burst, tokens + Double(now - stamp) / 1e9 * rate)
            stamp = now
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Slow start (Envoy's `slow_start_config`): an endpoint that joins a running cluster
/// takes a growing share over `window` instead of its full share at once, so a cold
/// instance (empty caches, a JIT warming up) is not handed its full load in its first
/// second. Its weight is scaled by
///
///     factor = max(minWeight, (t / window)^(1 / aggression))
///
/// where `t` is the time since it joined: linear with `aggression` 1, slower at first above
/// that. After `window` the factor is 1.
public struct SlowStartPolicy: Sendable, Hashable {
    public var window: Duration
    public var aggression: Double
    /// The factor an endpoint starts at (0...1; Envoy's `min_weight_percent` / 100).
    public var minWeight: Double

    public init(window: Duration = .seconds(30), aggression: Double = 1, minWeight: Double = 0.1) {
        self.window = window
        self.aggression = aggression
        self.minWeight = minWeight
    }

    /// The weight factor `elapsed` nanoseconds after the endpoint joined.
    public func factor(elapsedNanos elapsed: UInt64) -> Double {
        let windowNanos = Double(window.nanoseconds)
        guard windowNanos > 0, Double(elapsed) < windowNanos else { return 1 }
        let ramp = pow(Double(elapsed) / windowNanos, 1 / max(aggression, .leastNonzeroMagnitude))
        return min(1, max(minWeight, ramp))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The load estimate of one endpoint under peak-EWMA (Finagle's `PeakEwma`, as Linkerd
/// uses it): a moving average of response latency that jumps up to any slower sample at
/// once ("peak") and decays towards faster ones with time constant `decay`:
///
///     w = exp(-Δt / τ);  cost = rtt > cost ? rtt : cost·w + rtt·(1 − w)
///
/// Load is `cost × (pending + 1)`, divided by the endpoint's weight, so a slow endpoint
/// and a busy one both look expensive. Between samples the cost decays as if a 0 ns sample
/// had been observed, so an endpoint that was slow a while ago gets tried again.
///
/// Time is passed in (`now`, nanoseconds on any monotonic clock): no clock is read here.
public struct PeakEWMA: Sendable, Hashable {
    /// Time constant of the decay, in nanoseconds.
    public let decayNanos: Double
    /// Latency in nanoseconds; starts at the prior given to new endpoints.
    public private(set) var cost: Double
    /// When `cost` was last updated (nanoseconds).
    public private(set) var stamp: UInt64
    /// Requests sent and not yet answered.
    public private(set) var pending: Int = 0

    /// - Parameters:
    ///   - decay: the EWMA time constant (default 10 s).
    ///   - prior: the cost of an endpoint with no sample yet (default 30 ms).
    ///   - now: the current time, nanoseconds.
    public init(decay: Duration = .seconds(10), prior: Duration = .milliseconds(30), now: UInt64) {
        self.decayNanos = Double(decay.nanoseconds)
        self.cost = Double(prior.nanoseconds)
        self.stamp = now
    }

    /// The cost decayed to `now` (as if a 0 ns sample had been seen).
    public func cost(at now: UInt64) -> Double {
        let elapsed = now > stamp ? Double(now - stamp) : 0
        return cost * exp(-elapsed / decayNanos)
    }

    /// `cost × (pending + 1) / weight`; lower is better.
    public func load(at now: UInt64, weight: Double = 1) -> Double {
        cost(at: now) * Double(pending + 1) / max(weight, .leastNonzeroMagnitude)
    }

    /// Forgets outstanding requests (their completions will not be reported to this
    /// estimate: the balancer it belonged to was rebuilt).
    public mutating func resetPending() {
        pending = 0
    }

    /// A request was sent to this endpoint.
    public mutating func requestStarted() {
        pending += 1
    }

    /// A request to this endpoint finished after `rtt`.
    public mutating func requestFinished(rtt: Duration, now: UInt64) {
        pending = max(0, pending - 1)
        observe(rttNanos: Double(rtt.nanoseconds), now: now)
    }

    mutating func observe(rttNanos rtt: Double, now: UInt64) {
        let elapsed = now > stamp ? Double(now - stamp) : 0
        if rtt > cost {
            cost = rtt
        } else {
            let w = exp(-elapsed / decayNanos)
            cost = cost * w + rtt * (1 - w)
        }
        stamp = max(stamp, now)
    }
}

extension Duration {
    /// Whole nanoseconds (saturating at Int64's range). Shared with the data plane, which
    /// turns policy durations into event-loop timer amounts.
    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled + attoseconds / 1_000_000_000
    }
}

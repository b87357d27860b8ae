#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The load estimate of one endpoint under peak-EWMA (Finagle's `PeakEwma`, as Linkerd
/// uses it): a moving average of response latency that jumps up towards a slower sample at
/// once ("peak") and decays towards faster ones with time constant `decay`:
///
///     w = exp(-Δt / τ);  blend = cost·w + rtt·(1 − w)
///     cost = rtt > cost·w ? max(blend, min(rtt, peakFactor·cost·w)) : blend
///
/// (Finagle's peak is unbounded, `cost = rtt`; bounding it to `peakFactor` per sample is
/// Meshwork's, see `observe`.)
///
/// Load is `cost × (pending + 1)`, divided by the endpoint's weight, so a slow endpoint
/// and a busy one both look expensive. Between samples the cost decays as if a 0 ns sample
/// had been observed, so an endpoint that was slow a while ago gets tried again.
///
/// Time is passed in (`now`, nanoseconds on any monotonic clock): no clock is read here.
public struct PeakEWMA: Sendable, Hashable {
    /// Time constant of the decay, in nanoseconds.
    public let decayNanos: Double
    /// How far one slower sample lifts the estimate at most: to `peakFactor` x what it
    /// was (see `observe`).
    public let peakFactor: Double
    /// Latency in nanoseconds; starts at the prior given to new endpoints.
    public private(set) var cost: Double
    /// When `cost` was last updated (nanoseconds).
    public private(set) var stamp: UInt64
    /// Requests sent and not yet answered.
    public private(set) var pending: Int = 0

    /// 1 s, where Finagle and Linkerd take 10 s: an instance out of the picks (after a
    /// stall, or slower a moment) is tried again within about a second instead of ten, so
    /// identical instances keep their fair shares over any 10 s (the simulator's "3
    /// identical, sub-ms with rare 20 ms stalls": lowest 10 s share 0.75 of fair, against
    /// 0.41 with 10 s and no peak bound), and a slow one still gets little (3.7% where
    /// fair is 33%).
    public static let defaultDecay = Duration.seconds(1)

    /// - Parameters:
    ///   - decay: the EWMA time constant (default 1 s).
    ///   - prior: the cost of an endpoint with no sample yet (default 30 ms; an endpoint
    ///     that joins a running cluster starts at the cluster's typical cost instead).
    ///   - peakFactor: the most one slower sample multiplies the estimate by (default 2).
    ///   - now: the current time, nanoseconds.
    public init(
        decay: Duration = PeakEWMA.defaultDecay,
        prior: Duration = .milliseconds(30),
        peakFactor: Double = 2,
        now: UInt64
    ) {
        self.decayNanos = Double(decay.nanoseconds)
        self.peakFactor = max(1, peakFactor)
        self.cost = Double(prior.nanoseconds)
        self.stamp = now
    }

    /// An estimate that starts at `cost` nanoseconds (a new endpoint at its cluster's
    /// typical cost).
    public init(decayNanos: Double, peakFactor: Double, costNanos cost: Double, now: UInt64) {
        self.decayNanos = decayNanos
        self.peakFactor = max(1, peakFactor)
        self.cost = cost
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

    /// One sample. Slower than the estimate: the estimate rises at once ("peak"), but by
    /// at most `peakFactor` per sample, so one stalled request (a pause 60 times the usual
    /// latency) doubles an instance's cost instead of keeping it out of the picks until
    /// 60x has decayed, while a slower instance still reaches its real cost in a few
    /// samples (log2 of the ratio). Otherwise the time-weighted blend.
    mutating func observe(rttNanos rtt: Double, now: UInt64) {
        let elapsed = now > stamp ? Double(now - stamp) : 0
        let w = exp(-elapsed / decayNanos)
        let blend = cost * w + rtt * (1 - w)
        if rtt > cost * w {
            cost = max(blend, min(rtt, cost * w * peakFactor))
        } else {
            cost = blend
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

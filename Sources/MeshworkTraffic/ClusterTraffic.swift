/// One event loop's share of limits that hold for a whole process. The data plane keeps
/// its traffic state per event loop (nothing on the request path takes a lock), so every
/// limit is split here and nowhere else: counts round up (the total is never lower than
/// the limit), rates divide.
public struct LoopShare: Sendable, Hashable {
    public let loops: Int

    public init(loops: Int) {
        self.loops = max(1, loops)
    }

    /// `ceil(limit / loops)`; 0 stays 0.
    public func of(_ limit: Int) -> Int {
        limit <= 0 ? 0 : (limit + loops - 1) / loops
    }

    public func of(_ rate: Double) -> Double {
        rate / Double(loops)
    }

    public func of(_ limits: CircuitBreakerLimits) -> CircuitBreakerLimits {
        var share = limits
        share.maxConnections = of(limits.maxConnections)
        share.maxPendingRequests = of(limits.maxPendingRequests)
        share.maxRequests = of(limits.maxRequests)
        share.maxRetries = of(limits.maxRetries)
        return share
    }

    /// A concurrency limiter's bounds for one loop (at least 1 each).
    public func of(_ policy: GradientLimiterPolicy) -> GradientLimiterPolicy {
        var share = policy
        share.minConcurrency = max(1, of(policy.minConcurrency))
        share.maxConcurrency = max(share.minConcurrency, of(policy.maxConcurrency))
        return share
    }
}

/// What a cluster's traffic state is built from: the part of a service's policy that
/// balances and protects calls to it. Limits are for the whole process.
public struct ClusterTrafficPolicy: Sendable, Hashable {
    public var balancer: BalancerAlgorithm
    public var zones: ZonePolicy
    public var slowStart: SlowStartPolicy?
    public var outlierDetection: OutlierDetectionPolicy?
    public var circuitBreakers: CircuitBreakerLimits
    public var retries: RetryPolicy
    public var adaptiveThrottling: AdaptiveThrottlePolicy?

    public init(
        balancer: BalancerAlgorithm = .peakEWMA,
        zones: ZonePolicy = ZonePolicy(),
        slowStart: SlowStartPolicy? = nil,
        outlierDetection: OutlierDetectionPolicy? = OutlierDetectionPolicy(),
        circuitBreakers: CircuitBreakerLimits = CircuitBreakerLimits(),
        retries: RetryPolicy = RetryPolicy(),
        adaptiveThrottling: AdaptiveThrottlePolicy? = nil
    ) {
        self.balancer = balancer
        self.zones = zones
        self.slowStart = slowStart
        self.outlierDetection = outlierDetection
        self.circuitBreakers = circuitBreakers
        self.retries = retries
        self.adaptiveThrottling = adaptiveThrottling
    }
}

/// A cluster's traffic state on one event loop, as one value: the balancer, outlier
/// detection, circuit breaker, retry budget and adaptive throttle. `update` rebuilds all of
/// it from a new policy and endpoint list, carrying over what was learnt and what is held
/// (latency estimates, ejections, breaker counts, the budget's and the throttle's windows
/// while their settings stay), so a pushed policy applies whole and at once, and an
/// unchanged one changes nothing.
public struct ClusterTraffic {
    public private(set) var policy: ClusterTrafficPolicy
    public let share: LoopShare
    public var balancer: LoadBalancer<SplitMix64>
    public var outliers: OutlierDetector?
    public var breaker: CircuitBreaker
    public var retryBudget: RetryBudget
    public var throttle: AdaptiveThrottle?

    public init(
        policy: ClusterTrafficPolicy,
        endpoints: [BalancerEndpoint],
        share: LoopShare,
        seed: UInt64,
        now: UInt64,
        roundRobinStart: Int = 0
    ) {
        self.policy = policy
        self.share = share
        self.balancer = Self.balancer(policy, endpoints, seed: seed, now: now, roundRobinStart: roundRobinStart)
        self.outliers = policy.outlierDetection.map { OutlierDetector(count: endpoints.count, policy: $0, now: now) }
        self.breaker = CircuitBreaker(limits: share.of(policy.circuitBreakers))
        self.retryBudget = Self.budget(policy.retries, share)
        self.throttle = policy.adaptiveThrottling.map { AdaptiveThrottle(k: $0.k, window: $0.window) }
    }

    private static func balancer(
        _ policy: ClusterTrafficPolicy,
        _ endpoints: [BalancerEndpoint],
        seed: UInt64,
        now: UInt64,
        roundRobinStart: Int
    ) -> LoadBalancer<SplitMix64> {
        LoadBalancer(
            algorithm: policy.balancer,
            endpoints: endpoints,
            zones: policy.zones,
            random: SplitMix64(seed: seed),
            now: now,
            slowStart: policy.slowStart,
            roundRobinStart: roundRobinStart
        )
    }

    private static func budget(_ retries: RetryPolicy, _ share: LoopShare) -> RetryBudget {
        RetryBudget(
            ratio: retries.budgetRatio,
            minRetriesPerSecond: share.of(retries.budgetMinPerSecond),
            window: retries.budgetWindow
        )
    }

    /// Rebuilds the state for `policy` and `endpoints`. `previous[i]` is the index the
    /// i-th endpoint had before (nil: new). Returns how many more endpoints are ejected
    /// than before (negative: fewer), for the ejected-endpoints gauge.
    @discardableResult
    public mutating func update(
        policy newPolicy: ClusterTrafficPolicy,
        endpoints: [BalancerEndpoint],
        previous: [Int?],
        seed: UInt64,
        now: UInt64,
        roundRobinStart: Int = 0
    ) -> Int {
        let old = balancer
        balancer = Self.balancer(newPolicy, endpoints, seed: seed, now: now, roundRobinStart: roundRobinStart)
        balancer.carryOver(from: old, now: now)

        let oldOutliers = outliers
        outliers = newPolicy.outlierDetection.map { OutlierDetector(count: endpoints.count, policy: $0, now: now) }
        if let oldOutliers, outliers != nil {
            // Ejections survive the change: an ejected instance stays out for its time.
            outliers?.carryOver(from: oldOutliers, previous: previous)
        }
        for index in endpoints.indices where outliers?.isEjected(index) == true {
            balancer.setAvailable(index, false)
        }

        // What is held stays held: releases of slots taken under the old limits land here.
        breaker = breaker.withLimits(share.of(newPolicy.circuitBreakers))
        if newPolicy.retries.budgetRatio != policy.retries.budgetRatio
            || newPolicy.retries.budgetMinPerSecond != policy.retries.budgetMinPerSecond
            || newPolicy.retries.budgetWindow != policy.retries.budgetWindow
        {
            retryBudget = retryBudget.reconfigured(
                ratio: newPolicy.retries.budgetRatio,
                minRetriesPerSecond: share.of(newPolicy.retries.budgetMinPerSecond),
                window: newPolicy.retries.budgetWindow
            )
        }
        if newPolicy.adaptiveThrottling != policy.adaptiveThrottling {
            throttle = newPolicy.adaptiveThrottling.map { AdaptiveThrottle(k: $0.k, window: $0.window) }
        }
        policy = newPolicy
        return (outliers?.ejectedCount ?? 0) - (oldOutliers?.ejectedCount ?? 0)
    }
}

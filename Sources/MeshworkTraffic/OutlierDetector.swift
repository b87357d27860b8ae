/// What an exchange with an endpoint came to, as outlier detection classifies it.
public enum ExchangeOutcome: Sendable, Hashable {
    /// Any answer below 500 (a 4xx is the caller's problem, not the endpoint's).
    case success
    /// A 500 or other 5xx that is not a gateway failure.
    case serverError
    /// Connect failure, reset, timeout, or 502/503/504: the endpoint may be gone or sick.
    case gatewayFailure

    public init(status: Int) {
        switch status {
        case 502, 503, 504: self = .gatewayFailure
        case 500...599: self = .serverError
        default: self = .success
        }
    }
}

/// Outlier detection settings (Envoy's defaults, except the ejection cap: 50% rather than
/// 10%, since small services of two or three instances are common in a mesh).
public struct OutlierDetectionPolicy: Sendable, Hashable {
    /// Consecutive 5xx (any kind) that eject; 0 disables.
    public var consecutive5xx: Int = 5
    /// Consecutive gateway failures that eject; 0 disables.
    public var consecutiveGatewayFailures: Int = 5
    /// How often success rates are compared and ejections expire.
    public var interval: Duration = .seconds(10)
    /// Ejection lasts `baseEjectionTime x times ejected`, capped at `maxEjectionTime`.
    public var baseEjectionTime: Duration = .seconds(30)
    public var maxEjectionTime: Duration = .seconds(300)
    /// At most this share of the endpoints is ejected at once (at least one may always be,
    /// but never the last one standing).
    public var maxEjectionPercent: Double = 50
    /// Success-rate outliers: endpoints below `mean - factor x stdev` of the success rates
    /// of endpoints with at least `successRateRequestVolume` requests in the interval,
    /// when at least `successRateMinimumHosts` have that volume; factor 0 disables.
    public var successRateStdevFactor: Double = 1.9
    public var successRateMinimumHosts: Int = 5
    public var successRateRequestVolume: Int = 100

    public init() {}
}

/// Why an endpoint was ejected.
public enum EjectionReason: String, Sendable, Hashable {
    case consecutive5xx = "consecutive_5xx"
    case consecutiveGatewayFailures = "consecutive_gateway_failures"
    case successRate = "success_rate"
}

/// A change in an endpoint's ejection state, for the balancer, metrics and logs.
public enum OutlierEvent: Sendable, Hashable {
    case ejected(index: Int, reason: EjectionReason, duration: Duration)
    /// The ejection expired: the endpoint is back on probation (its ejection count is
    /// kept, so failing again ejects it for longer; a clean interval lowers the count).
    case returned(index: Int)
}

/// Passive health checking (Envoy's outlier detection): watches each endpoint's answers
/// and ejects the ones that fail in a row or whose success rate is a statistical outlier
/// among their peers, for a time that grows with each ejection.
public struct OutlierDetector: Sendable {
    public let policy: OutlierDetectionPolicy

    struct Endpoint: Sendable {
        var consecutive5xx = 0
        var consecutiveGateway = 0
        var successes = 0
        var total = 0
        var ejectionCount = 0
        var ejectedUntil: UInt64?
        var ejectedThisInterval = false
    }

    private var state: [Endpoint]
    /// When the next interval ends (nanoseconds).
    public private(set) var nextTick: UInt64

    public init(count: Int, policy: OutlierDetectionPolicy = OutlierDetectionPolicy(), now: UInt64) {
        self.policy = policy
        self.state = Array(repeating: Endpoint(), count: count)
        self.nextTick = now &+ UInt64(policy.interval.nanoseconds)
    }

    /// Takes over the state (streaks, ejections and their counts) of endpoints that `old`
    /// also had: `previous[i]` is endpoint i's index in `old`, nil when it is new. An
    /// endpoint list that changes (an instance joins) must not give an ejected one a pass.
    public mutating func carryOver(from old: OutlierDetector, previous: [Int?]) {
        for (index, oldIndex) in previous.enumerated() where index < state.count {
            if let oldIndex, oldIndex < old.state.count { state[index] = old.state[oldIndex] }
        }
    }

    public func isEjected(_ index: Int) -> Bool {
        state[index].ejectedUntil != nil
    }

    public var ejectedCount: Int { state.lazy.filter { $0.ejectedUntil != nil }.count }

    public func ejectionCount(_ index: Int) -> Int { state[index].ejectionCount }

    /// Records one exchange; returns the ejection it triggers, if any.
    public mutating func record(_ index: Int, _ outcome: ExchangeOutcome, now: UInt64) -> OutlierEvent? {
        var endpoint = state[index]
        endpoint.total += 1
        var reason: EjectionReason?
        switch outcome {
        case .success:
            endpoint.successes += 1
            endpoint.consecutive5xx = 0
            endpoint.consecutiveGateway = 0
        case .serverError:
            endpoint.consecutive5xx += 1
            endpoint.consecutiveGateway = 0
            if policy.consecutive5xx > 0, endpoint.consecutive5xx >= policy.consecutive5xx {
                reason = .consecutive5xx
            }
        case .gatewayFailure:
            endpoint.consecutive5xx += 1
            endpoint.consecutiveGateway += 1
            if policy.consecutiveGatewayFailures > 0, endpoint.consecutiveGateway >= policy.consecutiveGatewayFailures {
                reason = .consecutiveGatewayFailures
            } else if policy.consecutive5xx > 0, endpoint.consecutive5xx >= policy.consecutive5xx {
                reason = .consecutive5xx
            }
        }
        state[index] = endpoint
        guard let reason, endpoint.ejectedUntil == nil else { return nil }
        return eject(index, reason: reason, now: now)
    }

    /// Runs the periodic work when an interval has passed: expires ejections, lowers the
    /// count of endpoints that stayed clean, and ejects success-rate outliers. Cheap to
    /// call on every request: it does nothing before `nextTick`.
    public mutating func tick(now: UInt64) -> [OutlierEvent] {
        guard now >= nextTick else { return [] }
        nextTick = now &+ UInt64(policy.interval.nanoseconds)
        var events: [OutlierEvent] = []
        for index in state.indices {
            if let until = state[index].ejectedUntil {
                if until <= now {
                    state[index].ejectedUntil = nil
                    state[index].consecutive5xx = 0
                    state[index].consecutiveGateway = 0
                    events.append(.returned(index: index))
                }
            } else if !state[index].ejectedThisInterval, state[index].ejectionCount > 0 {
                state[index].ejectionCount -= 1
            }
        }
        events += successRateOutliers(now: now)
        for index in state.indices {
            state[index].successes = 0
            state[index].total = 0
            state[index].ejectedThisInterval = false
        }
        return events
    }

    private mutating func successRateOutliers(now: UInt64) -> [OutlierEvent] {
        guard policy.successRateStdevFactor > 0 else { return [] }
        let eligible = state.indices.filter {
            state[$0].ejectedUntil == nil && state[$0].total >= policy.successRateRequestVolume
        }
        guard eligible.count >= max(policy.successRateMinimumHosts, 1) else { return [] }
        let rates = eligible.map { Double(state[$0].successes) / Double(state[$0].total) }
        let mean = rates.reduce(0, +) / Double(rates.count)
        let variance = rates.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(rates.count)
        let threshold = mean - policy.successRateStdevFactor * variance.squareRoot()
        var events: [OutlierEvent] = []
        for (index, rate) in zip(eligible, rates) where rate < threshold {
            if let event = eject(index, reason: .successRate, now: now) { events.append(event) }
        }
        return events
    }

    private mutating func eject(_ index: Int, reason: EjectionReason, now: UInt64) -> OutlierEvent? {
        // The cap lets at least one endpoint go (Envoy's rule), but never the last one left:
        // with nowhere else to send, ejecting would only turn the app's errors into ours.
        let cap = max(1, Int((Double(state.count) * policy.maxEjectionPercent / 100).rounded(.down)))
        guard ejectedCount < cap, ejectedCount + 1 < state.count else { return nil }
        state[index].ejectionCount += 1
        state[index].ejectedThisInterval = true
        let base = policy.baseEjectionTime.nanoseconds
        let nanos = min(
            base.multipliedReportingOverflow(by: Int64(state[index].ejectionCount)).partialValue,
            max(base, policy.maxEjectionTime.nanoseconds)
        )
        state[index].ejectedUntil = now &+ UInt64(max(0, nanos))
        state[index].consecutive5xx = 0
        state[index].consecutiveGateway = 0
        return .ejected(index: index, reason: reason, duration: .nanoseconds(nanos))
    }
}

/// The resources a cluster's circuit breaker counts.
public enum BreakerResource: String, Sendable, Hashable, CaseIterable {
    case connections
    case pendingRequests = "pending_requests"
    case requests
    case retries
}

/// Limits of a circuit breaker (Envoy's defaults, but for retries).
public struct CircuitBreakerLimits: Sendable, Hashable {
    public var maxConnections: Int = 1024
    public var maxPendingRequests: Int = 1024
    public var maxRequests: Int = 1024
    /// Retries in flight at once. Envoy's default is 3, and Envoy ignores it once a retry
    /// budget is set; every Meshwork cluster has a budget, which is what bounds retry
    /// storms. A limit of 3 turned an instance's death into failures: every request in
    /// flight on its connections is reset at the same moment, and all but 3 of their
    /// retries were refused (DiscoveryTests' kill under load: 4 in flight, the 4th retry
    /// refused, 1 of 4000 GETs lost).
    public var maxRetries: Int = 1024

    public init() {}

    public func limit(_ resource: BreakerResource) -> Int {
        switch resource {
        case .connections: maxConnections
        case .pendingRequests: maxPendingRequests
        case .requests: maxRequests
        case .retries: maxRetries
        }
    }
}

/// Envoy-style circuit breaking: counters of connections, requests waiting for a
/// connection, requests in flight and retries in flight, each with a hard limit. Over a
/// limit the request fails at once (503 with the resource as the reason) instead of
/// queueing behind an upstream that cannot keep up.
public struct CircuitBreaker: Sendable {
    public let limits: CircuitBreakerLimits
    private var counts: [Int] = Array(repeating: 0, count: BreakerResource.allCases.count)

    public init(limits: CircuitBreakerLimits = CircuitBreakerLimits()) {
        self.limits = limits
    }

    /// The same counts under new limits (a pushed policy): what is held stays held and is
    /// released as usual; over a lowered limit, nothing more is taken until below it.
    public func withLimits(_ limits: CircuitBreakerLimits) -> CircuitBreaker {
        var next = CircuitBreaker(limits: limits)
        next.counts = counts
        return next
    }

    public func count(_ resource: BreakerResource) -> Int {
        counts[Self.slot(resource)]
    }

    /// Takes one unit of `resource`, or returns false when it is at its limit.
    public mutating func tryAcquire(_ resource: BreakerResource) -> Bool {
        let slot = Self.slot(resource)
        guard counts[slot] < limits.limit(resource) else { return false }
        counts[slot] += 1
        return true
    }

    public mutating func release(_ resource: BreakerResource) {
        let slot = Self.slot(resource)
        counts[slot] = max(0, counts[slot] - 1)
    }

    private static func slot(_ resource: BreakerResource) -> Int {
        switch resource {
        case .connections: 0
        case .pendingRequests: 1
        case .requests: 2
        case .retries: 3
        }
    }
}

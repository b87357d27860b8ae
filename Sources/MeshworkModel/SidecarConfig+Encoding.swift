import MeshworkTraffic

// `/config` shows the effective config as JSON, with the same field names and duration
// spellings (`250ms`, `10s`) the YAML uses.

private struct Keys: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ name: String) { self.stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension KeyedEncodingContainer<Keys> {
    fileprivate mutating func put(_ value: some Encodable, _ key: String) throws {
        try encode(value, forKey: Keys(key))
    }
    fileprivate mutating func put(_ value: Duration, _ key: String) throws {
        try encode(DurationText.format(value), forKey: Keys(key))
    }
}

extension BalancerAlgorithm: Encodable {}
extension RetryCondition: Encodable {}

extension EndpointConfig: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(address, "address")
        try c.put(weight, "weight")
        if let zone { try c.put(zone, "zone") }
    }
}

extension HashKey: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

extension SubsetConfig: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(size, "size")
        try c.put(clientIndex, "clientIndex")
        try c.put(clientCount, "clientCount")
    }
}

extension RateLimitConfig: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(requestsPerSecond, "requestsPerSecond")
        try c.put(burst, "burst")
    }
}

extension OutlierDetectionPolicy: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(consecutive5xx, "consecutive5xx")
        try c.put(consecutiveGatewayFailures, "consecutiveGatewayFailures")
        try c.put(interval, "interval")
        try c.put(baseEjectionTime, "baseEjectionTime")
        try c.put(maxEjectionTime, "maxEjectionTime")
        try c.put(maxEjectionPercent, "maxEjectionPercent")
        try c.put(successRateStdevFactor, "successRateStdevFactor")
        try c.put(successRateMinimumHosts, "successRateMinimumHosts")
        try c.put(successRateRequestVolume, "successRateRequestVolume")
    }
}

extension CircuitBreakerLimits: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(maxConnections, "maxConnections")
        try c.put(maxPendingRequests, "maxPendingRequests")
        try c.put(maxRequests, "maxRequests")
        try c.put(maxRetries, "maxRetries")
    }
}

extension RetryPolicy: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(attempts, "attempts")
        try c.put(on.map(\.rawValue).sorted(), "on")
        if let perTryTimeout { try c.put(perTryTimeout, "perTryTimeout") }
        if nonIdempotent { try c.put(true, "nonIdempotent") }
        try c.put(backoff.base, "backoffBase")
        try c.put(backoff.cap, "backoffMax")
        try c.put(budgetRatio, "budgetRatio")
        try c.put(budgetMinPerSecond, "budgetMinPerSecond")
        try c.put(budgetWindow, "budgetWindow")
    }
}

extension AdaptiveThrottlePolicy: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(k, "k")
        try c.put(window, "window")
    }
}

extension GradientLimiterPolicy: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(sampleWindow, "sampleWindow")
        try c.put(percentile, "percentile")
        try c.put(minRTTInterval, "minRTTInterval")
        try c.put(minRTTRequests, "minRTTRequests")
        try c.put(minConcurrency, "minConcurrency")
        try c.put(maxConcurrency, "maxConcurrency")
        try c.put(buffer, "buffer")
    }
}

extension TrafficPolicy: Encodable {
    /// Disabled parts are written as `off` (not left out, which would read back as the
    /// default), so a stored or served policy parses back to itself.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(connectTimeout, "connectTimeout")
        try c.put(requestTimeout, "requestTimeout")
        try c.put(balancer, "balancer")
        if let hashOn { try c.put(hashOn, "hashOn") }
        try c.put(zoneAware, "zoneAware")
        if let outlierDetection {
            try c.put(outlierDetection, "outlierDetection")
        } else {
            try c.put("off", "outlierDetection")
        }
        try c.put(circuitBreakers, "circuitBreakers")
        try c.put(retries, "retries")
        if let adaptiveThrottling {
            try c.put(adaptiveThrottling, "adaptiveThrottling")
        } else {
            try c.put("off", "adaptiveThrottling")
        }
        // Off is the default: absent reads back as off.
        if let slowStart { try c.put(slowStart, "slowStart") }
        if let subsetSize { try c.put(subsetSize, "subsetSize") }
    }
}

extension SlowStartPolicy: Encodable {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.put(window, "window")
        try c.put(aggression, "aggression")
        try c.put(minWeight * 100, "minWeightPercent")
    }
}

import MeshworkTraffic
import Yams

// Readers of the traffic policies in a sidecar config: every field optional, defaults from
// the policy types, every bad value reported with its path.

extension SidecarConfig {
    /// The fields of a `TrafficPolicy`, shared by clusters in the sidecar config and
    /// services in the controller's API.
    static let policyKeys: Set<String> = [
        "connectTimeout", "requestTimeout", "balancer", "hashOn", "zoneAware", "outlierDetection", "circuitBreakers",
        "retries", "adaptiveThrottling", "slowStart", "subsetSize",
    ]

    static func readPolicy(_ f: ConfigReader.Fields, _ reader: ConfigReader, into policy: inout TrafficPolicy) {
        if let d = f.duration("connectTimeout") { policy.connectTimeout = d }
        if let d = f.duration("requestTimeout") { policy.requestTimeout = d }
        if let b = f.choice("balancer", as: BalancerAlgorithm.self) { policy.balancer = b }
        if let text = f.string("hashOn") {
            if let key = HashKey(text) {
                policy.hashOn = key
            } else {
                reader.fail(f.path("hashOn"), "expected header:<name> or source-ip, found \"\(text)\"")
            }
        }
        if let b = f.bool("zoneAware") { policy.zoneAware = b }
        if let n = f.int("subsetSize", range: 1...100_000) { policy.subsetSize = n }
        if let detection = Self.readOutlierDetection(f.node("outlierDetection"), f.path("outlierDetection"), reader) {
            policy.outlierDetection = detection
        }
        if let b = reader.mapping(
            f.node("circuitBreakers"),
            f.path("circuitBreakers"),
            known: ["maxConnections", "maxPendingRequests", "maxRequests", "maxRetries"]
        ) {
            if let n = b.int("maxConnections", range: 1...1_000_000) { policy.circuitBreakers.maxConnections = n }
            if let n = b.int("maxPendingRequests", range: 1...1_000_000) {
                policy.circuitBreakers.maxPendingRequests = n
            }
            if let n = b.int("maxRequests", range: 1...1_000_000) { policy.circuitBreakers.maxRequests = n }
            if let n = b.int("maxRetries", range: 0...1_000_000) { policy.circuitBreakers.maxRetries = n }
        }
        if let retries = Self.readRetries(f.node("retries"), f.path("retries"), reader) {
            policy.retries = retries
        }
        if let throttle = reader.toggle(
            f.node("adaptiveThrottling"),
            f.path("adaptiveThrottling"),
            default: AdaptiveThrottlePolicy(),
            known: ["k", "window"],
            read: { throttle, t in
                if let k = t.double("k", range: 1...100) { throttle.k = k }
                if let d = t.duration("window") { throttle.window = d.duration }
            }
        ) {
            policy.adaptiveThrottling = throttle
        }
        if let ramp = reader.toggle(
            f.node("slowStart"),
            f.path("slowStart"),
            default: SlowStartPolicy(),
            known: ["window", "aggression", "minWeightPercent"],
            read: { ramp, r in
                if let d = r.duration("window") { ramp.window = d.duration }
                if let a = r.double("aggression", range: 0.1...10) { ramp.aggression = a }
                if let p = r.double("minWeightPercent", range: 0...100) { ramp.minWeight = p / 100 }
            }
        ) {
            policy.slowStart = ramp
        }
    }

    /// `127.0.0.1:8080`, or `{address: 127.0.0.1:8080, weight: 2, zone: eu-1a}`.
    static func readEndpoint(_ node: Node, _ path: String, _ reader: ConfigReader) -> EndpointConfig? {
        if case .scalar = node {
            return reader.address(node, path).map { EndpointConfig(address: $0) }
        }
        guard let f = reader.mapping(node, path, known: ["address", "weight", "zone"]) else { return nil }
        guard let address = f.required("address", f.address("address")) else { return nil }
        var endpoint = EndpointConfig(address: address)
        if let w = f.double("weight", range: 0...1_000_000) { endpoint.weight = w }
        if let z = f.string("zone") { endpoint.zone = z }
        return endpoint
    }

    static func readOutlierDetection(
        _ node: Node?,
        _ path: String,
        _ reader: ConfigReader
    ) -> OutlierDetectionPolicy?? {
        reader.toggle(
            node,
            path,
            default: OutlierDetectionPolicy(),
            known: [
                "consecutive5xx", "consecutiveGatewayFailures", "interval", "baseEjectionTime", "maxEjectionTime",
                "maxEjectionPercent", "successRateStdevFactor", "successRateMinimumHosts", "successRateRequestVolume",
            ]
        ) { policy, f in
            if let n = f.int("consecutive5xx", range: 0...1_000_000) { policy.consecutive5xx = n }
            if let n = f.int("consecutiveGatewayFailures", range: 0...1_000_000) {
                policy.consecutiveGatewayFailures = n
            }
            if let d = f.duration("interval") {
                if d.duration > .zero {
                    policy.interval = d.duration
                } else {
                    reader.fail(f.path("interval"), "must be longer than 0")
                }
            }
            if let d = f.duration("baseEjectionTime") { policy.baseEjectionTime = d.duration }
            if let d = f.duration("maxEjectionTime") { policy.maxEjectionTime = d.duration }
            if let p = f.double("maxEjectionPercent", range: 0...100) { policy.maxEjectionPercent = p }
            if let x = f.double("successRateStdevFactor", range: 0...100) { policy.successRateStdevFactor = x }
            if let n = f.int("successRateMinimumHosts", range: 1...1_000_000) { policy.successRateMinimumHosts = n }
            if let n = f.int("successRateRequestVolume", range: 1...1_000_000) {
                policy.successRateRequestVolume = n
            }
        }
    }

    static func readRetries(_ node: Node?, _ path: String, _ reader: ConfigReader) -> RetryPolicy? {
        let known: Set = [
            "attempts", "on", "perTryTimeout", "nonIdempotent", "backoffBase", "backoffMax", "budgetRatio",
            "budgetMinPerSecond", "budgetWindow",
        ]
        guard
            let value = reader.toggle(
                node,
                path,
                default: RetryPolicy(),
                known: known,
                read: { policy, f in
                    if let n = f.int("attempts", range: 0...10) { policy.attempts = n }
                    if f.node("on") != nil {
                        var conditions: Set<RetryCondition> = []
                        for (p, item) in reader.sequence(f.node("on"), f.path("on")) {
                            if let c = reader.choice(item, p, as: RetryCondition.self) { conditions.insert(c) }
                        }
                        policy.on = conditions
                    }
                    if let d = f.duration("perTryTimeout") { policy.perTryTimeout = d.duration }
                    if let b = f.bool("nonIdempotent") { policy.nonIdempotent = b }
                    if let d = f.duration("backoffBase") { policy.backoff.base = d.duration }
                    if let d = f.duration("backoffMax") { policy.backoff.cap = d.duration }
                    if let r = f.double("budgetRatio", range: 0...10) { policy.budgetRatio = r }
                    if let r = f.double("budgetMinPerSecond", range: 0...1_000_000) { policy.budgetMinPerSecond = r }
                    if let d = f.duration("budgetWindow") {
                        if d.duration >= .seconds(1) {
                            policy.budgetWindow = d.duration
                        } else {
                            reader.fail(f.path("budgetWindow"), "must be at least 1s")
                        }
                    }
                }
            )
        else { return nil }
        guard var policy = value else {
            // `retries: off`
            var none = RetryPolicy()
            none.attempts = 0
            return none
        }
        if policy.backoff.cap < policy.backoff.base { policy.backoff.cap = policy.backoff.base }
        return policy
    }

    static func readConcurrencyLimit(
        _ node: Node?,
        _ path: String,
        _ reader: ConfigReader
    ) -> GradientLimiterPolicy?? {
        reader.toggle(
            node,
            path,
            default: GradientLimiterPolicy(),
            known: [
                "sampleWindow", "percentile", "minRTTInterval", "minRTTRequests", "minConcurrency", "maxConcurrency",
                "buffer",
            ]
        ) { policy, f in
            if let d = f.duration("sampleWindow") { policy.sampleWindow = d.duration }
            if let p = f.double("percentile", range: 0...1) { policy.percentile = p }
            if let d = f.duration("minRTTInterval") { policy.minRTTInterval = d.duration }
            if let n = f.int("minRTTRequests", range: 1...100_000) { policy.minRTTRequests = n }
            if let n = f.int("minConcurrency", range: 1...100_000) { policy.minConcurrency = n }
            if let n = f.int("maxConcurrency", range: 1...1_000_000) { policy.maxConcurrency = n }
            if let b = f.double("buffer", range: 0...10) { policy.buffer = b }
            if policy.maxConcurrency < policy.minConcurrency {
                reader.fail(f.path("maxConcurrency"), "must be at least minConcurrency (\(policy.minConcurrency))")
            }
        }
    }

    static func readRateLimit(_ node: Node?, _ path: String, _ reader: ConfigReader) -> RateLimitConfig?? {
        guard let node else { return .none }
        if case .scalar(let scalar) = node, ["off", "false", "no"].contains(scalar.string.lowercased()) {
            return .some(nil)
        }
        guard let f = reader.mapping(node, path, known: ["requestsPerSecond", "burst"]) else { return .none }
        guard let rate = f.required("requestsPerSecond", f.double("requestsPerSecond", range: 0.001...10_000_000))
        else { return .none }
        let burst = f.int("burst", range: 1...10_000_000)
        return .some(RateLimitConfig(requestsPerSecond: rate, burst: burst))
    }
}

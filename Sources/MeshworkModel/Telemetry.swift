/// What a sidecar reports to the controller every few seconds: per edge, the responses by
/// status class and the latency histogram of the interval (HdrHistogram buckets as
/// `[value µs, count]` pairs, so the controller merges them exactly).
public struct TelemetryReport: Sendable, Hashable, Codable {
    public var service: String
    /// The interval the report covers, in seconds.
    public var seconds: Double
    public var edges: [EdgeReport]

    public init(service: String, seconds: Double, edges: [EdgeReport]) {
        self.service = service
        self.seconds = seconds
        self.edges = edges
    }
}

public struct EdgeReport: Sendable, Hashable, Codable {
    /// `inbound` (peer = the calling service, `unauthenticated` without mTLS) or `outbound`
    /// (peer = the called service).
    public var direction: String
    public var peer: String
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    public var classes: [UInt64]
    /// Latency histogram: `[highest equivalent value in µs, count]` per non-empty bucket.
    public var latency: [[UInt64]]
    /// The route rule that decided an outbound edge's exchanges (`route/rule`).
    public var route: String?
    /// The version subset the rule sent them to (`orders~version=v2`), when it was one: a
    /// rollout's analysis of one rule's canary share reads it (`analysis.route`).
    public var backend: String?

    public init(direction: String, peer: String, classes: [UInt64], latency: [[UInt64]]) {
        self.direction = direction
        self.peer = peer
        self.classes = classes
        self.latency = latency
    }

    public var requests: UInt64 { classes.reduce(0, +) }
}

/// Golden metrics over a window, as the controller serves them (`/v1/stats`, `/v1/edges`).
public struct GoldenMetrics: Sendable, Hashable, Codable {
    public var requests: UInt64
    public var failures: UInt64
    /// Requests per second over the window.
    public var rps: Double
    /// Share of responses that are not 5xx (1 with no requests).
    public var successRate: Double
    public var p50Ms: Double?
    public var p95Ms: Double?
    public var p99Ms: Double?

    public init(
        requests: UInt64,
        failures: UInt64,
        rps: Double,
        successRate: Double,
        p50Ms: Double?,
        p95Ms: Double?,
        p99Ms: Double?
    ) {
        self.requests = requests
        self.failures = failures
        self.rps = rps
        self.successRate = successRate
        self.p50Ms = p50Ms
        self.p95Ms = p95Ms
        self.p99Ms = p99Ms
    }
}

public struct ServiceStats: Sendable, Hashable, Codable {
    public var service: String
    public var metrics: GoldenMetrics
    public var instances: [InstanceStats]

    public init(service: String, metrics: GoldenMetrics, instances: [InstanceStats]) {
        self.service = service
        self.metrics = metrics
        self.instances = instances
    }
}

public struct InstanceStats: Sendable, Hashable, Codable {
    public var instance: String
    public var metrics: GoldenMetrics

    public init(instance: String, metrics: GoldenMetrics) {
        self.instance = instance
        self.metrics = metrics
    }
}

public struct EdgeStats: Sendable, Hashable, Codable {
    public var source: String
    public var target: String
    /// Whether the callers were authenticated by mTLS (their identity is the source).
    public var mtls: Bool
    public var metrics: GoldenMetrics

    public init(source: String, target: String, mtls: Bool, metrics: GoldenMetrics) {
        self.source = source
        self.target = target
        self.mtls = mtls
        self.metrics = metrics
    }
}

public struct StatsResponse: Sendable, Hashable, Codable {
    public var windowSeconds: Int
    public var services: [ServiceStats]

    public init(windowSeconds: Int, services: [ServiceStats]) {
        self.windowSeconds = windowSeconds
        self.services = services
    }
}

public struct EdgesResponse: Sendable, Hashable, Codable {
    public var windowSeconds: Int
    public var edges: [EdgeStats]

    public init(windowSeconds: Int, edges: [EdgeStats]) {
        self.windowSeconds = windowSeconds
        self.edges = edges
    }
}

/// One 10-second slot of a service's traffic, for charts (`/v1/stats/series`).
public struct SeriesPoint: Sendable, Hashable, Codable {
    /// How long before now the slot began.
    public var secondsAgo: Int
    public var requests: UInt64
    public var failures: UInt64
    public var p50Ms: Double?
    public var p99Ms: Double?

    public init(secondsAgo: Int, requests: UInt64, failures: UInt64, p50Ms: Double?, p99Ms: Double?) {
        self.secondsAgo = secondsAgo
        self.requests = requests
        self.failures = failures
        self.p50Ms = p50Ms
        self.p99Ms = p99Ms
    }
}

public struct ServiceSeries: Sendable, Hashable, Codable {
    public var service: String
    /// Oldest first; slots without traffic are there with zero requests.
    public var points: [SeriesPoint]

    public init(service: String, points: [SeriesPoint]) {
        self.service = service
        self.points = points
    }
}

public struct SeriesResponse: Sendable, Hashable, Codable {
    public var windowSeconds: Int
    public var slotSeconds: Int
    public var services: [ServiceSeries]

    public init(windowSeconds: Int, slotSeconds: Int, services: [ServiceSeries]) {
        self.windowSeconds = windowSeconds
        self.slotSeconds = slotSeconds
        self.services = services
    }
}

/// Which side of the sidecar an edge is: calls it received (`inbound`, the peer is the
/// calling service) or made (`outbound`, the peer is the called service).
public enum EdgeDirection: String, Sendable, Hashable, Codable {
    case inbound
    case outbound
}

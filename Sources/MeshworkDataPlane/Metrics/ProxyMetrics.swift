import NIOHTTP1
import Prometheus
import Synchronization

/// Latency buckets from 0.5 ms to 30 s: a sidecar hop is sub-millisecond, a slow app is seconds.
let latencyBuckets: [Duration] = [
    .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
    .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
    .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
]

private func descriptor(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "meshwork", metricName: name, unitName: unit, helpText: help)
}

/// Response status classes used as a metric label; the label set stays bounded.
enum StatusClass: Int, CaseIterable {
    case informational = 1
    case success, redirection, clientError, serverError

    var label: String { "\(rawValue)xx" }

    init(_ status: HTTPResponseStatus) {
        self = StatusClass(rawValue: min(5, max(1, Int(status.code) / 100))) ?? .serverError
    }
}

/// The metrics of one listener, created once when the listener starts.
final class ListenerMetrics: Sendable {
    let name: String
    private let requests: [Counter]
    let latency: LoopShardedHistogram
    let connectionsActive: Gauge
    let connectionsTotal: Counter
    let bytesReceived: Counter
    let bytesSent: Counter
    private let errors: [String: Counter]
    /// Connections open now, against `maxConnections` (touched at accept and close only).
    let openConnections = Atomic<Int>(0)
    let maxConnections: Int

    init(
        name: String,
        kind: String,
        registry: PrometheusCollectorRegistry,
        histograms: LatencyHistograms = LatencyHistograms(loops: 1),
        maxConnections: Int = .max
    ) {
        self.name = name
        self.maxConnections = maxConnections
        let labels = [("listener", name), ("kind", kind)]
        requests = StatusClass.allCases.map {
            registry.makeCounter(
                descriptor: descriptor(
                    "listener_requests",
                    "total",
                    "Requests answered by the listener, by status class."
                ),
                labels: labels + [("class", $0.label)]
            )
        }
        latency = histograms.make(
            family: "meshwork_listener_request_duration_seconds",
            help: "Time from request head to the end of the response, as seen by the listener.",
            labels: labels
        )
        connectionsActive = registry.makeGauge(
            descriptor: descriptor("listener_connections_active", "", "Downstream connections now open."),
            labels: labels
        )
        connectionsTotal = registry.makeCounter(
            descriptor: descriptor("listener_connections", "total", "Downstream connections accepted."),
            labels: labels
        )
        bytesReceived = registry.makeCounter(
            descriptor: descriptor("listener_received_bytes", "total", "Bytes read from downstream connections."),
            labels: labels
        )
        bytesSent = registry.makeCounter(
            descriptor: descriptor("listener_sent_bytes", "total", "Bytes written to downstream connections."),
            labels: labels
        )
        var errors: [String: Counter] = [:]
        for error in MeshError.all {
            errors[error.reason] = registry.makeCounter(
                descriptor: descriptor(
                    "listener_mesh_errors",
                    "total",
                    "Requests or connections the mesh itself refused or failed, by reason."
                ),
                labels: labels + [("reason", error.reason)]
            )
        }
        self.errors = errors
    }

    func countRequest(status: HTTPResponseStatus, nanoseconds: Int64, loop: Int) {
        requests[StatusClass(status).rawValue - 1].increment()
        latency.record(nanoseconds: nanoseconds, loop: loop)
    }

    func countError(_ error: MeshError) {
        errors[error.reason]?.increment()
    }
}

/// What became of a mirrored copy of a request: the label of
/// `meshwork_cluster_mirror_requests_total`.
enum MirrorResult: String, CaseIterable, Sendable {
    /// Answered below 500.
    case answered
    /// Answered 500 or above (or a gRPC UNAVAILABLE).
    case errorStatus = "error_status"
    /// No answer: the connection failed or was reset, or no endpoint was there.
    case failed
    case timeout
    /// Not sent: the cluster's breaker or throttle refused it.
    case refused
    /// Not sent: the body passed `RouteFilter.Mirror.maxBodyBytes`.
    case bodyTooLarge = "body_too_large"
    /// Not sent: the caller went away before its request ended.
    case abandoned

    var index: Int { Self.allCases.firstIndex(of: self) ?? 0 }
}

/// The metrics of one cluster and its endpoints, created once per cluster.
final class ClusterMetrics: Sendable {
    let name: String
    private let requests: [Counter]
    let latency: LoopShardedHistogram
    private let errors: [String: Counter]
    let connectionsActive: Gauge
    let connectionsTotal: Counter
    private let endpointMetrics: Mutex<[String: EndpointMetrics]>
    private let registry: PrometheusCollectorRegistry
    /// Outlier ejections by reason (consecutive_5xx, consecutive_gateway_failures, success_rate).
    let ejections: [String: Counter]
    /// Endpoints ejected now, summed over event loops (each loop ejects on what it sees).
    let ejectedEndpoints: Gauge
    let retries: Counter
    let retryBudgetExhausted: Counter
    /// Mirrored copies sent to the cluster (a route's RequestMirror), by what became of them.
    private let mirrors: [Counter]

    init(
        name: String,
        endpoints: [String],
        registry: PrometheusCollectorRegistry,
        histograms: LatencyHistograms = LatencyHistograms(loops: 1)
    ) {
        self.name = name
        let labels = [("cluster", name)]
        requests = StatusClass.allCases.map {
            registry.makeCounter(
                descriptor: descriptor("cluster_requests", "total", "Requests sent to the cluster, by status class."),
                labels: labels + [("class", $0.label)]
            )
        }
        latency = histograms.make(
            family: "meshwork_cluster_request_duration_seconds",
            help: "Time from sending the request head upstream to the end of the response.",
            labels: labels
        )
        var errors: [String: Counter] = [:]
        for error in MeshError.all {
            errors[error.reason] = registry.makeCounter(
                descriptor: descriptor("cluster_errors", "total", "Upstream failures of the cluster, by reason."),
                labels: labels + [("reason", error.reason)]
            )
        }
        self.errors = errors
        connectionsActive = registry.makeGauge(
            descriptor: descriptor("cluster_connections_active", "", "Upstream connections now open."),
            labels: labels
        )
        connectionsTotal = registry.makeCounter(
            descriptor: descriptor("cluster_connections", "total", "Upstream connections opened."),
            labels: labels
        )
        self.registry = registry
        var byName: [String: EndpointMetrics] = [:]
        for endpoint in endpoints {
            byName[endpoint] = EndpointMetrics(cluster: name, endpoint: endpoint, registry: registry)
        }
        self.endpointMetrics = Mutex(byName)
        var ejections: [String: Counter] = [:]
        for reason in ["consecutive_5xx", "consecutive_gateway_failures", "success_rate"] {
            ejections[reason] = registry.makeCounter(
                descriptor: descriptor("cluster_outlier_ejections", "total", "Endpoints ejected by outlier detection."),
                labels: labels + [("reason", reason)]
            )
        }
        self.ejections = ejections
        ejectedEndpoints = registry.makeGauge(
            descriptor: descriptor(
                "cluster_outlier_ejected_endpoints",
                "",
                "Endpoints ejected now, summed over event loops."
            ),
            labels: labels
        )
        retries = registry.makeCounter(
            descriptor: descriptor("cluster_retries", "total", "Requests tried again after a failure."),
            labels: labels
        )
        retryBudgetExhausted = registry.makeCounter(
            descriptor: descriptor(
                "cluster_retry_budget_exhausted",
                "total",
                "Retries not made because the retry budget or breaker was spent."
            ),
            labels: labels
        )
        mirrors = MirrorResult.allCases.map {
            registry.makeCounter(
                descriptor: descriptor(
                    "cluster_mirror_requests",
                    "total",
                    "Mirrored copies of requests for the cluster, by what became of them (their answers are discarded)."
                ),
                labels: labels + [("result", $0.rawValue)]
            )
        }
    }

    func countMirror(_ result: MirrorResult) {
        mirrors[result.index].increment()
    }

    func countRequest(status: HTTPResponseStatus, nanoseconds: Int64, loop: Int) {
        requests[StatusClass(status).rawValue - 1].increment()
        latency.record(nanoseconds: nanoseconds, loop: loop)
    }

    func countError(_ error: MeshError) {
        errors[error.reason]?.increment()
    }

    /// The metrics of one endpoint, created on first use (endpoints come and go with
    /// discovery; a pool looks its metrics up once, when it is created).
    func endpoint(_ name: String) -> EndpointMetrics {
        endpointMetrics.withLock { metrics in
            if let existing = metrics[name] { return existing }
            let created = EndpointMetrics(cluster: self.name, endpoint: name, registry: registry)
            metrics[name] = created
            return created
        }
    }
}

final class EndpointMetrics: Sendable {
    private let requests: [Counter]
    let connectionsActive: Gauge

    init(cluster: String, endpoint: String, registry: PrometheusCollectorRegistry) {
        let labels = [("cluster", cluster), ("endpoint", endpoint)]
        requests = StatusClass.allCases.map {
            registry.makeCounter(
                descriptor: descriptor("endpoint_requests", "total", "Requests sent to one endpoint, by status class."),
                labels: labels + [("class", $0.label)]
            )
        }
        connectionsActive = registry.makeGauge(
            descriptor: descriptor("endpoint_connections_active", "", "Connections now open to one endpoint."),
            labels: labels
        )
    }

    func countRequest(status: HTTPResponseStatus) {
        requests[StatusClass(status).rawValue - 1].increment()
    }
}

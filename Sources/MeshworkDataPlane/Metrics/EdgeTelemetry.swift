import Histogram
import MeshworkModel
import NIOConcurrencyHelpers

/// One edge: a direction and the service on the other end, and on the caller's side the
/// route rule that decided its exchanges (`route/rule`; nil: no route did).
public struct EdgeKey: Sendable, Hashable {
    public var direction: EdgeDirection
    public var peer: String
    public var route: String?
    /// The version subset (cluster) the route sent them to, when it was one.
    public var backend: String?

    public init(direction: EdgeDirection, peer: String, route: String? = nil, backend: String? = nil) {
        self.direction = direction
        self.peer = peer
        self.route = route
        self.backend = backend
    }

    /// The order edges are listed and reported in.
    var order: (String, String, String, String) { (direction.rawValue, peer, route ?? "", backend ?? "") }
}

/// What one edge carried: responses by status class and a latency histogram (HdrHistogram,
/// microseconds, two significant digits, 1 µs to 60 s): histograms from any number of
/// event loops, sidecars or time slices merge exactly.
public struct EdgeData: Sendable {
    /// Responses by class: index 0 is 1xx ... index 4 is 5xx.
    public var classes: [UInt64] = [0, 0, 0, 0, 0]
    public var latency = EdgeData.emptyHistogram()
    /// Body bytes received from the client and sent back to it.
    public var requestBytes: UInt64 = 0
    public var responseBytes: UInt64 = 0
    /// Answers the mesh made itself, by reason (`x-meshwork-error`); a handful of reasons.
    public var meshErrors: [String: UInt64] = [:]

    public init() {}

    public static func emptyHistogram() -> Histogram<UInt64> {
        Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .two)
    }

    public var requests: UInt64 { classes.reduce(0, +) }
    public var failures: UInt64 { classes[4] }

    mutating func record(_ exchange: EdgeExchange) {
        classes[min(4, max(0, exchange.status / 100 - 1))] += 1
        _ = latency.record(min(max(1, exchange.micros), 60_000_000))
        requestBytes += exchange.requestBytes
        responseBytes += exchange.responseBytes
        if let reason = exchange.meshError { meshErrors[reason, default: 0] += 1 }
    }

    public mutating func add(_ other: EdgeData) {
        for index in classes.indices { classes[index] += other.classes[index] }
        latency.add(other.latency)
        requestBytes += other.requestBytes
        responseBytes += other.responseBytes
        for (reason, count) in other.meshErrors { meshErrors[reason, default: 0] += count }
    }
}

/// What one finished exchange adds to its edge.
struct EdgeExchange {
    var status: Int
    var micros: UInt64
    var requestBytes: UInt64
    var responseBytes: UInt64
    var meshError: String?
}

/// The sidecar's per-edge telemetry. Each event loop records into its own shard (a lock
/// only that loop takes per request, and a collector once per scrape or report, so loops
/// never contend with each other); collecting moves the shards' data into a running total
/// (for /metrics) and into what the next report to the controller carries.
public final class EdgeTelemetry: Sendable {
    /// Peers per direction before further ones are counted as `other` (bounded labels).
    public static let maxPeers = 64

    final class Shard: Sendable {
        let edges = NIOLockedValueBox<[EdgeKey: EdgeData]>([:])

        func record(_ key: EdgeKey, _ exchange: EdgeExchange) {
            edges.withLockedValue { edges in
                if edges[key] == nil, edges.count >= EdgeTelemetry.maxPeers * 2 {
                    edges[EdgeKey(direction: key.direction, peer: "other", route: nil), default: EdgeData()]
                        .record(exchange)
                } else {
                    edges[key, default: EdgeData()].record(exchange)
                }
            }
        }
    }

    private struct Totals {
        var cumulative: [EdgeKey: EdgeData] = [:]
        var pending: [EdgeKey: EdgeData] = [:]
    }

    let shards: [Shard]
    private let totals = NIOLockedValueBox(Totals())

    init(loops: Int) {
        shards = (0..<max(1, loops)).map { _ in Shard() }
    }

    private func collect() {
        totals.withLockedValue { totals in
            for shard in shards {
                let taken = shard.edges.withLockedValue { edges in
                    defer { edges.removeAll(keepingCapacity: true) }
                    return edges
                }
                for (key, data) in taken {
                    Self.merge(data, as: key, into: &totals.cumulative)
                    Self.merge(data, as: key, into: &totals.pending)
                }
            }
        }
    }

    private static func merge(_ data: EdgeData, as key: EdgeKey, into edges: inout [EdgeKey: EdgeData]) {
        var key = key
        if edges[key] == nil, edges.filter({ $0.key.direction == key.direction }).count >= maxPeers {
            key.peer = "other"
            key.route = nil
            key.backend = nil
        }
        edges[key, default: EdgeData()].add(data)
    }

    /// Everything since the last report (and starts the next one).
    public func takeReport() -> [EdgeKey: EdgeData] {
        collect()
        return totals.withLockedValue { totals in
            defer { totals.pending = [:] }
            return totals.pending
        }
    }

    /// Everything since start.
    public func cumulative() -> [EdgeKey: EdgeData] {
        collect()
        return totals.withLockedValue { $0.cumulative }
    }

    /// The edges in the Prometheus text format: `meshwork_edge_requests_total` by
    /// direction, peer and status class, and `meshwork_edge_request_duration_seconds`.
    func prometheusText() -> [UInt8] {
        let edges = cumulative().sorted { $0.key.order < $1.key.order }
        var text = """
            # HELP meshwork_edge_requests_total Responses per edge: inbound by calling service, outbound by called service, by status class.
            # TYPE meshwork_edge_requests_total counter

            """
        for (key, data) in edges {
            for (index, count) in data.classes.enumerated() {
                text += "meshwork_edge_requests_total{\(Self.labels(key)),class=\"\(index + 1)xx\"} \(count)\n"
            }
        }
        text += """
            # HELP meshwork_edge_request_duration_seconds Time from request head to the end of the response, per edge.
            # TYPE meshwork_edge_request_duration_seconds histogram

            """
        for (key, data) in edges {
            let labels = Self.labels(key)
            for bound in latencyBuckets {
                let micros =
                    UInt64(bound.components.seconds) * 1_000_000
                    + UInt64(bound.components.attoseconds / 1_000_000_000_000)
                let count = data.latency.count(within: 0...micros)
                text +=
                    "meshwork_edge_request_duration_seconds_bucket{\(labels),le=\"\(Self.seconds(micros))\"} \(count)\n"
            }
            let total = data.latency.totalCount
            text += "meshwork_edge_request_duration_seconds_bucket{\(labels),le=\"+Inf\"} \(total)\n"
            let sum = data.latency.mean * Double(total) / 1_000_000
            text += "meshwork_edge_request_duration_seconds_sum{\(labels)} \(sum)\n"
            text += "meshwork_edge_request_duration_seconds_count{\(labels)} \(total)\n"
        }
        text += """
            # HELP meshwork_edge_request_bytes_total Request body bytes received per edge.
            # TYPE meshwork_edge_request_bytes_total counter

            """
        for (key, data) in edges {
            text += "meshwork_edge_request_bytes_total{\(Self.labels(key))} \(data.requestBytes)\n"
        }
        text += """
            # HELP meshwork_edge_response_bytes_total Response body bytes sent back per edge.
            # TYPE meshwork_edge_response_bytes_total counter

            """
        for (key, data) in edges {
            text += "meshwork_edge_response_bytes_total{\(Self.labels(key))} \(data.responseBytes)\n"
        }
        text += """
            # HELP meshwork_edge_mesh_errors_total Answers the mesh made itself per edge, by x-meshwork-error reason.
            # TYPE meshwork_edge_mesh_errors_total counter

            """
        for (key, data) in edges {
            for (reason, count) in data.meshErrors.sorted(by: { $0.key < $1.key }) {
                text += "meshwork_edge_mesh_errors_total{\(Self.labels(key)),reason=\"\(reason)\"} \(count)\n"
            }
        }
        return Array(text.utf8)
    }

    /// (Peers are service names, routes `route/rule` names, backends subset cluster names
    /// (`orders~version=v2`, label syntax): none needs escaping.)
    private static func labels(_ key: EdgeKey) -> String {
        var edge = "direction=\"\(key.direction.rawValue)\",peer=\"\(key.peer)\""
        if let route = key.route { edge += ",route=\"\(route)\"" }
        if let backend = key.backend { edge += ",backend=\"\(backend)\"" }
        return edge
    }

    private static func seconds(_ micros: UInt64) -> String {
        let value = Double(micros) / 1_000_000
        return value == value.rounded() ? String(Int(value)) : String(value)
    }
}

extension EdgeTelemetry {
    /// What happened since the last report, as the controller takes it.
    public func takeTelemetryReport(service: String, seconds: Double) -> TelemetryReport {
        let edges = takeReport()
            .sorted { $0.key.order < $1.key.order }
            .map { key, data in
                var edge = EdgeReport(
                    direction: key.direction.rawValue,
                    peer: key.peer,
                    classes: data.classes,
                    latency: data.latency.recordedValues().map { [$0.value, UInt64($0.count)] }
                )
                edge.route = key.route
                edge.backend = key.backend
                return edge
            }
        return TelemetryReport(service: service, seconds: seconds, edges: edges)
    }
}

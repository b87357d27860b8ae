import MeshworkTraffic

/// The sidecar's whole configuration. Every field has a default; see docs/configuration.md.
///
/// It is a plain value: the YAML loader builds it today, the controller will feed the same
/// model later.
public struct SidecarConfig: Sendable, Hashable, Encodable {
    /// This instance's service name (used in logs and metrics; identity later).
    public var service: String = "app"
    /// The zone this instance runs in; zone-aware balancing prefers endpoints in the same.
    public var zone: String?
    /// Event loops; 0 means one per core.
    public var threads: Int = 0
    /// Admin listener: /metrics, /ready, /live open; /config and /tap for the controller
    /// (over mTLS, its SPIFFE ID) or a holder of the admin token.
    public var admin: HostPort? = HostPort(host: "127.0.0.1", port: 9901)
    /// File with the admin token for `/config` and `/tap` (`Authorization: Bearer`): read
    /// if it exists, else created 0600 with 256 random bits. None: only the controller.
    public var adminTokenFile: String?
    /// Static mTLS material shared by the inbound listener and `mesh` clusters.
    public var tls: TLSFiles?
    public var inbound: InboundConfig?
    public var upstreams: [UpstreamConfig] = []
    public var httpProxy: HTTPProxyConfig?
    public var clusters: [ClusterConfig] = []
    public var timeouts: ListenerTimeouts = .init()
    public var limits: Limits = .init()
    /// The controller this sidecar registers with and learns its upstreams from.
    public var controller: ControllerLink?
    /// How this instance is registered (needs `controller` and `inbound`).
    public var instance: InstanceRegistration = .init()
    /// How the local app is health-checked (its result is reported to the controller).
    public var healthCheck: HealthCheckConfig = .init()
    /// Services whose instances come from the controller: each becomes a cluster of the
    /// same name (reachable by upstream ports and the HTTP proxy).
    public var discover: [String] = []
    /// Public listeners routed to mesh services (what `meshwork gateway` runs).
    public var listeners: [GatewayListenerConfig] = []
    /// Per-edge telemetry (requests, status classes and latency per caller or callee
    /// service, on /metrics and reported to the controller); off only to measure its cost.
    public var edgeTelemetry = true
    /// W3C trace context propagation and span export (off until an endpoint is set).
    public var tracing = TracingConfig()
    /// One JSON line per request (off by default).
    public var accessLog: AccessLogTarget?

    public init() {}

    public func cluster(named name: String) -> ClusterConfig? {
        clusters.first { $0.name == name }
    }

    /// The static clusters and, empty until discovery fills them, one per `discover` name.
    public var allClusters: [ClusterConfig] {
        clusters + discover.map { ClusterConfig.discovered($0) }
    }
}

public struct TLSFiles: Sendable, Hashable, Encodable {
    /// PEM bundle of the CA(s) that peers' certificates must chain to.
    public var ca: String
    /// PEM certificate chain this sidecar presents.
    public var cert: String
    /// PEM private key for `cert`.
    public var key: String

    public init(ca: String, cert: String, key: String) {
        self.ca = ca
        self.cert = cert
        self.key = key
    }
}

/// How the inbound side speaks to the local app.
public enum AppProtocol: String, Sendable, Hashable, Encodable, CaseIterable {
    case http1
    case h2c
    case tcp
}

public struct InboundConfig: Sendable, Hashable, Encodable {
    /// Where peer sidecars connect (mTLS when `tls` is set, plaintext otherwise).
    public var listen: HostPort
    /// The local app.
    public var app: HostPort
    public var `protocol`: AppProtocol = .http1
    /// Idle keep-alive connections kept per event loop to the app. As many as the
    /// connection limit: a cap below the concurrency the app sees closes and reopens a
    /// connection per request at that concurrency (h2load -c16 -m10 against a cap of 64
    /// cost ~40% more CPU per request, and TIME_WAIT sockets). The idle timeout closes
    /// what a burst left.
    public var maxIdleConnections: Int = CircuitBreakerLimits().maxConnections
    public var connectTimeout: TimeSpan = .seconds(1)
    public var requestTimeout: TimeSpan = .seconds(15)
    /// Adaptive concurrency limit in front of the app (off unless set).
    public var concurrencyLimit: GradientLimiterPolicy?
    /// Token-bucket rate limit in front of the app (off unless set).
    public var rateLimit: RateLimitConfig?

    public init(listen: HostPort, app: HostPort) {
        self.listen = listen
        self.app = app
    }
}

/// What an upstream port carries.
public enum ListenerProtocol: String, Sendable, Hashable, Encodable, CaseIterable {
    case http
    case tcp
}

/// One local port per upstream service: `127.0.0.1:9001 -> orders`.
public struct UpstreamConfig: Sendable, Hashable, Encodable {
    public var listen: HostPort
    public var cluster: String
    public var `protocol`: ListenerProtocol = .http

    public init(listen: HostPort, cluster: String) {
        self.listen = listen
        self.cluster = cluster
    }
}

/// `HTTP_PROXY` target: routes `http://orders/...` (or `orders.mesh`, `orders:80`) by Host.
public struct HTTPProxyConfig: Sendable, Hashable, Encodable {
    public var listen: HostPort
    /// Suffix stripped from Host before looking up the cluster.
    public var domain: String = "mesh"

    public init(listen: HostPort) {
        self.listen = listen
    }
}

/// How a cluster reaches its endpoints.
public enum EndpointProtocol: String, Sendable, Hashable, Encodable, CaseIterable {
    /// A peer sidecar's inbound listener: mTLS, and HTTP/2 for HTTP traffic.
    case mesh
    /// Plain HTTP/1.1 with keep-alive (or raw TCP for tcp listeners).
    case http1
    /// HTTP/2 over cleartext with prior knowledge.
    case h2c
}

/// A token bucket: `requestsPerSecond` on average, bursts of up to `burst`.
public struct RateLimitConfig: Sendable, Hashable {
    public var requestsPerSecond: Double
    public var burst: Int

    public init(requestsPerSecond: Double, burst: Int? = nil) {
        self.requestsPerSecond = requestsPerSecond
        self.burst = burst ?? max(1, Int(requestsPerSecond.rounded(.up)))
    }
}

/// One endpoint of a cluster.
public struct EndpointConfig: Sendable, Hashable {
    public var address: HostPort
    /// Relative capacity (balancers send in proportion).
    public var weight: Double = 1
    public var zone: String?

    public init(address: HostPort, weight: Double = 1, zone: String? = nil) {
        self.address = address
        self.weight = weight
        self.zone = zone
    }
}

/// What a hashing balancer (ring-hash, maglev) hashes to keep a caller on one endpoint.
public enum HashKey: Sendable, Hashable, CustomStringConvertible {
    /// The value of a request header (requests without it are spread at random).
    case header(String)
    /// The downstream client's IP address.
    case sourceIP

    public init?(_ text: String) {
        if text == "source-ip" {
            self = .sourceIP
        } else if text.hasPrefix("header:"), text.count > 7 {
            self = .header(String(text.dropFirst(7)).lowercased())
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .header(let name): "header:\(name)"
        case .sourceIP: "source-ip"
        }
    }
}

/// Deterministic subsetting: this sidecar is client `clientIndex` of `clientCount` and
/// talks to about `size` of the cluster's endpoints (see `DeterministicAperture`).
public struct SubsetConfig: Sendable, Hashable {
    public var size: Int
    public var clientIndex: Int
    public var clientCount: Int

    public init(size: Int, clientIndex: Int, clientCount: Int) {
        self.size = size
        self.clientIndex = clientIndex
        self.clientCount = clientCount
    }
}

public struct ClusterConfig: Sendable, Hashable, Encodable {
    public var name: String
    public var endpoints: [EndpointConfig] = []
    public var `protocol`: EndpointProtocol = .mesh
    public var connectTimeout: TimeSpan = .seconds(1)
    /// Whole-request deadline, from the request head to the end of the response.
    public var requestTimeout: TimeSpan = .seconds(15)
    /// Pooled connections idle this long are closed.
    public var idleTimeout: TimeSpan = .seconds(60)
    /// HTTP/1.1: idle keep-alive connections kept per endpoint per event loop; as many as
    /// the breaker's connection limit (see `InboundConfig.maxIdleConnections`).
    public var maxIdleConnections: Int = CircuitBreakerLimits().maxConnections
    /// HTTP/2: streams per connection before another connection is opened.
    public var maxConcurrentStreams: Int = 100
    /// HTTP/2: streams one connection carries in its life; then it takes no new ones,
    /// closes once its last ends, and another connection replaces it. The default (and
    /// most) is what the 31-bit stream IDs allow, with a margin: a long-lived connection
    /// is retired before it runs out of IDs (RFC 9113 5.1.1).
    public var maxRequestsPerConnection: Int = ClusterConfig.streamIDsPerConnection
    /// Client stream IDs are odd and at most 2^31 - 1: 2^30 of them, less a margin.
    public static let streamIDsPerConnection = (1 << 30) - 1024
    /// How an endpoint is picked for each request.
    public var balancer: BalancerAlgorithm = .peakEWMA
    /// The request key of `ring-hash` and `maglev` (random when nil or absent).
    public var hashOn: HashKey?
    /// Prefer endpoints in this sidecar's zone (when `zone` is set) while enough are healthy.
    public var zoneAware: Bool = true
    /// Weight per zone of the instances discovery knows that take no traffic (unhealthy,
    /// starting): zone-aware routing counts them in their zone's total, so a zone that
    /// lost most of its instances spills across zones. Filled by discovery.
    public var unservedWeights: [String: Double] = [:]
    /// Talk to a deterministic subset of the endpoints (all when nil).
    public var subset: SubsetConfig?
    /// Eject failing endpoints for a while (nil: off).
    public var outlierDetection: OutlierDetectionPolicy? = OutlierDetectionPolicy()
    public var circuitBreakers = CircuitBreakerLimits()
    public var retries = RetryPolicy()
    /// Reject locally when the cluster refuses most requests (nil: off).
    public var adaptiveThrottling: AdaptiveThrottlePolicy?
    /// Endpoints that join take a growing share over a window (nil: their full share at once).
    public var slowStart: SlowStartPolicy?

    public init(name: String) {
        self.name = name
    }
}

public struct ListenerTimeouts: Sendable, Hashable, Encodable {
    /// A client has this long to send a complete request head.
    public var headerRead: TimeSpan = .seconds(10)
    /// A client of a TLS listener (inbound mTLS, an https gateway listener) has this long
    /// to complete its handshake.
    public var tlsHandshake: TimeSpan = .seconds(10)
    /// A downstream connection with no request in flight is closed after this long.
    public var idle: TimeSpan = .seconds(300)
    /// An HTTP/2 client that sent nothing for this long is PINGed, and its connection
    /// closed if it stays silent 20 s more (or this long, if shorter).
    public var keepAlive: TimeSpan = .seconds(120)
    /// On SIGTERM, in-flight requests get this long to finish.
    public var drain: TimeSpan = .seconds(15)

    public init() {}
}

public struct Limits: Sendable, Hashable, Encodable {
    /// Largest request head (request line and headers) accepted; larger gets 431.
    public var maxHeaderBytes: Int = 64 * 1024
    /// Connections each listener keeps open at most; more are closed at accept
    /// (`connection_limit`), so a flood of idle connections cannot take every descriptor.
    public var maxConnections: Int = 10_000

    public init() {}
}

/// A config duration: a `Duration` that reads and prints as `250ms`, `5s`, `2m`, `1h`.
public struct TimeSpan: Sendable, Hashable, Encodable, CustomStringConvertible {
    public var duration: Duration

    public init(_ duration: Duration) {
        self.duration = duration
    }

    public static func seconds(_ value: Int) -> TimeSpan { TimeSpan(.seconds(value)) }
    public static func milliseconds(_ value: Int) -> TimeSpan { TimeSpan(.milliseconds(value)) }

    /// Whole nanoseconds, for event-loop timers.
    public var nanoseconds: Int64 {
        let (seconds, attos) = duration.components
        return seconds * 1_000_000_000 + attos / 1_000_000_000
    }

    public var description: String { DurationText.format(duration) }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// How calls to one service are balanced and protected: the part of a cluster's config
/// that the controller's service resources also carry.
public struct TrafficPolicy: Sendable, Hashable {
    public var connectTimeout: TimeSpan = .seconds(1)
    public var requestTimeout: TimeSpan = .seconds(15)
    public var balancer: BalancerAlgorithm = .peakEWMA
    public var hashOn: HashKey?
    public var zoneAware: Bool = true
    public var outlierDetection: OutlierDetectionPolicy? = OutlierDetectionPolicy()
    public var circuitBreakers = CircuitBreakerLimits()
    public var retries = RetryPolicy()
    public var adaptiveThrottling: AdaptiveThrottlePolicy?
    public var slowStart: SlowStartPolicy?
    /// Each caller talks to about this many of the service's instances (deterministic
    /// aperture over the instances sorted by id, the caller placed by its rank among its
    /// own service's instances); nil: every caller talks to every instance.
    public var subsetSize: Int?

    public init() {}
}

extension ClusterConfig {
    /// The service the cluster sends to: its name, or for a route backend's subset
    /// (`orders~version=v2`) the part before `~` (which no service name holds).
    public var service: String {
        guard let tilde = name.firstIndex(of: "~") else { return name }
        return String(name[..<tilde])
    }

    /// A cluster whose endpoints come from the controller: peer sidecars (mTLS when the
    /// sidecar has `tls`, else h2c to their inbound listeners).
    public static func discovered(_ name: String) -> ClusterConfig {
        var cluster = ClusterConfig(name: name)
        cluster.protocol = .mesh
        return cluster
    }

    /// The cluster's traffic policy fields, read or written together.
    public var policy: TrafficPolicy {
        get {
            var policy = TrafficPolicy()
            policy.connectTimeout = connectTimeout
            policy.requestTimeout = requestTimeout
            policy.balancer = balancer
            policy.hashOn = hashOn
            policy.zoneAware = zoneAware
            policy.outlierDetection = outlierDetection
            policy.circuitBreakers = circuitBreakers
            policy.retries = retries
            policy.adaptiveThrottling = adaptiveThrottling
            policy.slowStart = slowStart
            return policy
        }
        set {
            connectTimeout = newValue.connectTimeout
            requestTimeout = newValue.requestTimeout
            balancer = newValue.balancer
            hashOn = newValue.hashOn
            zoneAware = newValue.zoneAware
            outlierDetection = newValue.outlierDetection
            circuitBreakers = newValue.circuitBreakers
            retries = newValue.retries
            adaptiveThrottling = newValue.adaptiveThrottling
            slowStart = newValue.slowStart
        }
    }
}

/// Where the controller is and how to talk to it.
public struct ControllerLink: Sendable, Hashable, Encodable {
    /// Base URL of the controller's API, e.g. `http://127.0.0.1:7070`; or several,
    /// comma-separated (controllers sharing one etcd store), tried in turn.
    public var url: String

    /// `url[,url...]` split: each http:// or https://, all of one scheme, without a
    /// trailing slash; or why not.
    public static func urls(_ text: String) -> Result<[String], ControllerURLError> {
        let urls = text.split(separator: ",", omittingEmptySubsequences: false).map { part in
            var url = part
            while url.first == " " { url.removeFirst() }
            while url.last == " " { url.removeLast() }
            return String(url.hasSuffix("/") ? url.dropLast() : url)
        }
        for url in urls where !(url.hasPrefix("http://") || url.hasPrefix("https://")) || url.count < 9 {
            return .failure(ControllerURLError(reason: "expected an http:// or https:// URL, found \"\(url)\""))
        }
        guard Set(urls.map { $0.hasPrefix("https://") }).count == 1 else {
            return .failure(ControllerURLError(reason: "the controller URLs mix http:// and https://"))
        }
        return .success(urls)
    }
    /// File with the API token (for registration and heartbeats).
    public var tokenFile: String?
    /// The last snapshot is kept here, so the sidecar starts and serves while the controller
    /// is down; none when nil.
    public var cacheFile: String?
    /// PEM roots that verify an `https://` controller (its API certificate comes from the
    /// mesh CA: `<data-dir>/ca.pem`); after joining, the trust bundle it hands out is used.
    public var caFile: String?
    /// File with a join token (`meshwork ctl token create`): the sidecar then gets its
    /// workload certificate from the controller, and every mesh hop is mTLS with identities.
    public var joinTokenFile: String?
    /// Requested workload certificate lifetime (the controller caps it); renewed at 2/3.
    public var certificateTTL: TimeSpan?
    /// How often the per-edge telemetry goes to the controller.
    public var telemetryInterval: TimeSpan = .seconds(5)
    /// Traffic listeners accept once the first discovery state (the cache's or the
    /// controller's) is applied, so no caller meets empty clusters; without one after this
    /// long they accept anyway. `/ready` says "discovery" until the state is there.
    public var startupWait: TimeSpan = .seconds(5)
    /// A discovery cache older than this at start is not used (nil: any age). Its age is
    /// when the controller last confirmed the state: the file is refreshed every 30 s while
    /// the watch is live.
    public var maxStaleness: TimeSpan?

    /// Whether this sidecar gets its identity from the controller.
    public var usesWorkloadIdentity: Bool { joinTokenFile != nil }

    public init(url: String) {
        self.url = url
    }
}

public struct InstanceRegistration: Sendable, Hashable, Encodable {
    /// Defaults to `<service>-<address>-<port>`.
    public var id: String?
    /// The address peers reach this sidecar's inbound listener at (default: its listen host).
    public var address: String?
    public var zone: String?
    public var weight: Int = 1
    public var version: String?
    public var metadata: [String: String] = [:]
    /// The lease: without a heartbeat for this long the controller drops the instance.
    public var ttl: TimeSpan = .seconds(15)

    public init() {}
}

public struct HealthCheckConfig: Sendable, Hashable, Encodable {
    public enum Kind: String, Sendable, Hashable, Encodable, CaseIterable {
        /// GET `path` on the app; 2xx and 3xx are healthy.
        case http
        /// A TCP connection to the app's port.
        case tcp
        /// No check: healthy once registered.
        case none
    }

    public var kind: Kind = .tcp
    public var path: String = "/"
    public var interval: TimeSpan = .seconds(2)
    public var timeout: TimeSpan = .seconds(1)
    /// Consecutive passes before an instance is healthy again.
    public var healthyThreshold: Int = 1
    /// Consecutive failures before it is unhealthy.
    public var unhealthyThreshold: Int = 2

    public init() {}
}

/// Why a controller URL list is refused.
public struct ControllerURLError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }
}

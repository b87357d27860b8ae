import Yams

/// Per-request traffic policy for the callers of a service, in the shape of Gateway API's
/// `HTTPRoute` and `GRPCRoute` (the shape Linkerd, Istio and Consul adopted): rules that
/// match requests and send them to weighted backends (the service, a version subset of
/// it, or another service), with their own header changes, rewrites, redirects, faults,
/// timeouts and retries. Applied by every sidecar that calls a parent service.
///
/// Meshwork's departures from Gateway API, all additive: a parent is a mesh service by
/// name (`parentRefs: [{name: orders}]`, GAMMA's `kind: Service` being the default), or a
/// gateway by its service name (`{kind: Gateway, name: gateway, sectionName: public}`); a
/// backend may select instances by `version` or `labels` (a subset) instead of naming
/// another Service; a `Fault` filter (Istio's fault injection); header matches `Present`
/// and `Absent`.
public struct HTTPRoute: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case http = "HTTPRoute"
        case grpc = "GRPCRoute"
    }

    public var name: String
    public var kind: Kind = .http
    /// The services whose callers the route applies to.
    public var parents: [String] = []
    /// The gateways (and their listeners) whose public requests the route applies to.
    public var gateways: [GatewayParent] = []
    /// At a gateway: the request's host must be one of these (exact, or `*.example.com`
    /// for any name below it), lower case; none: any host. Mesh callers ignore them
    /// (GAMMA: the parent service is the host).
    public var hostnames: [String] = []
    /// The registry revision at which the route was created: its age, the tie-break of
    /// equally specific matches (older wins, then the name). Kept across updates.
    public var created: Int64 = 0
    public var rules: [RouteRule] = []

    public init(name: String) {
        self.name = name
    }

    /// The services a caller needs to know for this route: its parents and every backend
    /// and mirror it may send to.
    public var services: Set<String> {
        var names = Set(parents)
        for rule in rules {
            for backend in rule.targets { names.insert(backend.service) }
        }
        return names
    }

    /// What a watch names to receive the routes of gateway `name` (service names have no ':').
    public static func gatewayWatchKey(_ name: String) -> String { "gateway:" + name }

    /// Whether a watcher of `watched` (services, and gateway keys) needs this route.
    public func concerns(_ watched: Set<String>) -> Bool {
        parents.contains { watched.contains($0) }
            || gateways.contains { watched.contains(Self.gatewayWatchKey($0.name)) }
    }

    /// Whether the route applies to listener `listener` of gateway `gateway`.
    public func attaches(gateway: String, listener: String) -> Bool {
        gateways.contains { $0.name == gateway && ($0.listener == nil || $0.listener == listener) }
    }

    /// Bounds: a route is pushed to every caller and compiled on every event loop.
    public static let maxRules = 64
    public static let maxMatches = 16
    public static let maxBackends = 16
    public static let maxRegexLength = 256
    public static let maxHostnames = 16
}

/// A gateway parent: the gateway by its service name (its identity, `meshwork gateway`'s
/// `service`, `gateway` by default) and optionally one of its listeners (`sectionName`).
public struct GatewayParent: Sendable, Hashable {
    public var name: String
    /// nil: every HTTP and HTTPS listener of the gateway.
    public var listener: String?

    public init(name: String, listener: String? = nil) {
        self.name = name
        self.listener = listener
    }
}

public struct RouteRule: Sendable, Hashable {
    public var name: String?
    /// Any one matching selects the rule; none: every request (`PathPrefix /`).
    public var matches: [RouteMatch] = []
    public var filters: [RouteFilter] = []
    /// None: the parent service itself.
    public var backends: [RouteBackend] = []
    /// The whole request, retries included.
    public var requestTimeout: Duration?
    /// Each try.
    public var backendRequestTimeout: Duration?
    public var retry: RouteRetry?

    public init() {}

    /// Every backend the rule may send to: its backends, then its mirror's.
    public var targets: [RouteBackend] {
        var targets = backends
        for filter in filters { if case .mirror(let mirror) = filter { targets.append(mirror.backend) } }
        return targets
    }
}

public struct RouteMatch: Sendable, Hashable {
    public var path: PathMatch = .prefix("/")
    public var headers: [HeaderMatch] = []
    public var queryParams: [QueryMatch] = []
    /// Upper case.
    public var method: String?

    public init() {}
}

public enum PathMatch: Sendable, Hashable {
    case exact(String)
    /// On path segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    case prefix(String)
    /// The whole path matches the expression.
    case regex(String)
}

public struct HeaderMatch: Sendable, Hashable {
    public enum Test: Sendable, Hashable {
        case exact(String)
        case regex(String)
        case present
        case absent
    }

    /// Lower case.
    public var name: String
    public var test: Test

    public init(name: String, test: Test) {
        self.name = name
        self.test = test
    }
}

public struct QueryMatch: Sendable, Hashable {
    public var name: String
    /// Exact, or `regex` for a regular expression the whole value matches.
    public var value: String
    public var regex = false

    public init(name: String, value: String, regex: Bool = false) {
        self.name = name
        self.value = value
        self.regex = regex
    }
}

/// A backend: the instances of `service` (those with `version`, and carrying every one of
/// `labels` in their metadata, when set).
public struct RouteBackend: Sendable, Hashable {
    public var service: String
    public var version: String?
    public var labels: [String: String] = [:]
    public var weight: Int = 1

    public init(service: String, version: String? = nil, weight: Int = 1) {
        self.service = service
        self.version = version
        self.weight = weight
    }

    /// Whether the backend is a subset of its service rather than all of it.
    public var isSubset: Bool { version != nil || !labels.isEmpty }

    /// The name of the subset's cluster in a sidecar: `orders` for the whole service,
    /// `orders~version=v2,track=canary` for a subset (labels sorted).
    public var clusterName: String {
        guard isSubset else { return service }
        var parts = version.map { ["version=\($0)"] } ?? []
        parts += labels.keys.sorted().map { "\($0)=\(labels[$0] ?? "")" }
        return service + "~" + parts.joined(separator: ",")
    }

    /// Whether `instance` belongs to the backend.
    public func selects(_ instance: InstanceResource) -> Bool {
        guard instance.service == service else { return false }
        if let version, instance.version != version { return false }
        for (key, value) in labels where instance.metadata[key] != value { return false }
        return true
    }
}

public struct RouteRetry: Sendable, Hashable {
    /// Tries after the first.
    public var attempts: Int = 2
    /// Statuses (500-599) a try is repeated on; empty: the service's own conditions.
    public var codes: [Int] = []
    public var backoff: Duration?

    public init() {}
}

public enum RouteFilter: Sendable, Hashable {
    case requestHeaders(HeaderEdits)
    case responseHeaders(HeaderEdits)
    case rewrite(URLRewrite)
    case redirect(Redirect)
    case mirror(Mirror)
    case fault(Fault)

    public struct HeaderEdits: Sendable, Hashable {
        public var set: [(String, String)] = []
        public var add: [(String, String)] = []
        /// Lower case.
        public var remove: [String] = []

        public init() {}

        public static func == (a: HeaderEdits, b: HeaderEdits) -> Bool {
            a.set.elementsEqual(b.set, by: ==) && a.add.elementsEqual(b.add, by: ==) && a.remove == b.remove
        }

        public func hash(into hasher: inout Hasher) {
            for (name, value) in set + add {
                hasher.combine(name)
                hasher.combine(value)
            }
            hasher.combine(remove)
        }
    }

    public enum PathRewrite: Sendable, Hashable {
        case full(String)
        /// The part the rule's `PathPrefix` matched is replaced.
        case prefix(String)
    }

    public struct URLRewrite: Sendable, Hashable {
        public var hostname: String?
        public var path: PathRewrite?
        public init() {}
    }

    public struct Redirect: Sendable, Hashable {
        public var scheme: String?
        public var hostname: String?
        public var port: Int?
        public var path: PathRewrite?
        /// 301 or 302 (Gateway API's core), 303, 307 or 308.
        public var statusCode: Int = 302
        public init() {}
    }

    /// A copy of `percent` of the rule's requests to `backend`, fire and forget: the caller
    /// never waits for it or sees its answer.
    public struct Mirror: Sendable, Hashable {
        public var backend: RouteBackend
        /// 0-100.
        public var percent: Double = 100
        public init(backend: RouteBackend) {
            self.backend = backend
        }

        /// A request whose body is larger is not mirrored (counted as `body_too_large`): the
        /// copy is held until the request ends, and a mirror never slows its caller.
        public static let maxBodyBytes = 64 * 1024
    }

    /// Istio's fault injection, in the caller's sidecar before the request leaves.
    public struct Fault: Sendable, Hashable {
        public var delay: Duration?
        public var delayPercent: Double = 100
        /// An HTTP status to answer with (for a gRPC call: its gRPC equivalent), or a gRPC
        /// status for gRPC calls.
        public var abortStatus: Int?
        public var abortGRPCStatus: Int?
        public var abortPercent: Double = 100
        public init() {}
    }
}

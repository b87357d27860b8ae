import Foundation

/// What a sidecar knows of the registry: the services it watches and their instances, at
/// a revision. Built from a watch stream's snapshot and events (or from the cache file, which
/// holds a snapshot line), and kept when the controller is away.
public struct DiscoveryState: Sendable, Hashable {
    public private(set) var revision: Int64 = 0
    public private(set) var services: [String: ServiceResource] = [:]
    public private(set) var instances: [String: InstanceResource] = [:]
    /// The authorization policies that target the watched services.
    public private(set) var policies: [String: AuthorizationPolicy] = [:]
    public private(set) var mesh = MeshSettings()
    /// The routes whose parents are watched services.
    public private(set) var routes: [String: HTTPRoute] = [:]

    public init() {}

    public init(
        revision: Int64,
        services: [ServiceResource],
        instances: [InstanceResource],
        policies: [AuthorizationPolicy] = [],
        mesh: MeshSettings = MeshSettings(),
        routes: [HTTPRoute] = []
    ) {
        self.revision = revision
        self.mesh = mesh
        for route in routes { self.routes[route.name] = route }
        for policy in policies { self.policies[policy.name] = policy }
        for service in services { self.services[service.name] = service }
        for instance in instances { self.instances[instance.id] = instance }
    }

    /// Applies one event; returns the service it touched.
    @discardableResult
    public mutating func apply(_ event: RegistryEvent) -> String {
        revision = max(revision, event.revision)
        switch event.kind {
        case .servicePut:
            if let service = event.service { services[service.name] = service }
        case .serviceDeleted:
            if let service = event.service { services[service.name] = nil }
        case .instancePut:
            if let instance = event.instance { instances[instance.id] = instance }
        case .instanceDeleted:
            if let instance = event.instance { instances[instance.id] = nil }
        case .policyPut:
            if let policy = event.policy { policies[policy.name] = policy }
        case .policyDeleted:
            if let policy = event.policy { policies[policy.name] = nil }
        case .meshPut:
            if let mesh = event.mesh { self.mesh = mesh }
        case .routePut:
            if let route = event.route { routes[route.name] = route }
        case .routeDeleted:
            if let route = event.route { routes[route.name] = nil }
        }
        return event.serviceName
    }

    /// The instances of `service` that may get traffic (healthy, weight above 0), by id.
    public func servingInstances(of service: String) -> [InstanceResource] {
        instances.values.filter { $0.service == service && $0.isServing }.sorted { $0.id < $1.id }
    }
}

/// One line of a watch stream (or the cache file).
public enum WatchLine: Sendable, Hashable {
    case snapshot(DiscoveryState)
    case event(RegistryEvent)
    case ping(revision: Int64)
    /// The mesh CA roots (PEM, active first), the fingerprint of the one that signs and the
    /// serials (hex) of revoked workload certificates, sent first on every connection and
    /// again when any of them changes.
    case trustBundle(String, activeRoot: String?, revoked: [String] = [])

    /// Parses one NDJSON line as the controller writes it.
    public static func parse(_ line: some StringProtocol) throws -> WatchLine {
        let data = Data(line.utf8)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let type = object["type"] as? String
        else { throw WatchLineError("not a watch line: \(line.prefix(80))") }
        let revision = (object["revision"] as? NSNumber)?.int64Value ?? 0
        switch type {
        case "snapshot":
            let services = try (object["services"] as? [Any] ?? []).map(parseService)
            let instances = try (object["instances"] as? [Any] ?? []).map(parseInstance)
            let policies = try (object["policies"] as? [Any] ?? []).map(parsePolicy)
            let mesh = try object["mesh"].map(parseMesh) ?? MeshSettings()
            let routes = try (object["routes"] as? [Any] ?? []).map(parseRoute)
            return .snapshot(
                DiscoveryState(
                    revision: revision,
                    services: services,
                    instances: instances,
                    policies: policies,
                    mesh: mesh,
                    routes: routes
                )
            )
        case "event":
            guard let kindText = object["kind"] as? String, let kind = RegistryEvent.Kind(rawValue: kindText) else {
                throw WatchLineError("event without a known kind")
            }
            return .event(
                RegistryEvent(
                    revision: revision,
                    kind: kind,
                    service: try object["service"].map(parseService),
                    instance: try object["instance"].map(parseInstance),
                    policy: try object["policy"].map(parsePolicy),
                    mesh: try object["mesh"].map(parseMesh),
                    route: try object["route"].map(parseRoute)
                )
            )
        case "ping":
            return .ping(revision: revision)
        case "trust-bundle":
            guard let bundle = object["trustBundle"] as? String else {
                throw WatchLineError("trust-bundle line without trustBundle")
            }
            let revoked = (object["revoked"] as? [Any] ?? []).compactMap { $0 as? String }.filter {
                (1...64).contains($0.utf8.count) && $0.allSatisfy(\.isHexDigit)
            }
            return .trustBundle(bundle, activeRoot: object["activeRoot"] as? String, revoked: revoked)
        default:
            throw WatchLineError("unknown watch line type \"\(type)\"")
        }
    }

    private static func parseService(_ value: Any) throws -> ServiceResource {
        let data = try JSONSerialization.data(withJSONObject: value)
        return try ServiceResource.parse(String(decoding: data, as: UTF8.self))
    }

    private static func parsePolicy(_ value: Any) throws -> AuthorizationPolicy {
        let data = try JSONSerialization.data(withJSONObject: value)
        return try AuthorizationPolicy.parse(String(decoding: data, as: UTF8.self))
    }

    private static func parseRoute(_ value: Any) throws -> HTTPRoute {
        let data = try JSONSerialization.data(withJSONObject: value)
        return try HTTPRoute.parse(String(decoding: data, as: UTF8.self))
    }

    private static func parseMesh(_ value: Any) throws -> MeshSettings {
        try JSONDecoder().decode(MeshSettings.self, from: JSONSerialization.data(withJSONObject: value))
    }

    private static func parseInstance(_ value: Any) throws -> InstanceResource {
        try JSONDecoder().decode(InstanceResource.self, from: JSONSerialization.data(withJSONObject: value))
    }

    /// The snapshot line of `state`, as the controller writes it (the cache file's content).
    public static func snapshotLine(_ state: DiscoveryState) throws -> Data {
        struct Snapshot: Encodable {
            let type = "snapshot"
            let revision: Int64
            let services: [ServiceResource]
            let instances: [InstanceResource]
            let policies: [AuthorizationPolicy]
            let mesh: MeshSettings
            let routes: [HTTPRoute]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return try encoder.encode(
            Snapshot(
                revision: state.revision,
                services: state.services.values.sorted { $0.name < $1.name },
                instances: state.instances.values.sorted { $0.id < $1.id },
                policies: state.policies.values.sorted { $0.name < $1.name },
                mesh: state.mesh,
                routes: state.routes.values.sorted { $0.name < $1.name }
            )
        )
    }
}

public struct WatchLineError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

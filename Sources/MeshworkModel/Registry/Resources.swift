/// A service in the registry: its name, how it is spoken to, and the traffic policy every
/// caller's sidecar applies to it.
public struct ServiceResource: Sendable, Hashable, Encodable {
    public var name: String
    public var `protocol`: ServiceProtocol = .http
    /// Named ports, for DNS SRV records (`_http._tcp.orders.service.mesh.`).
    public var ports: [ServicePort] = [ServicePort(name: "http", protocol: .tcp)]
    public var policy = TrafficPolicy()

    public init(name: String) {
        self.name = name
    }
}

public enum ServiceProtocol: String, Sendable, Hashable, Codable, CaseIterable {
    /// HTTP/1.1 or HTTP/2 (gRPC included): balanced per request.
    case http
    /// Opaque TCP: balanced per connection.
    case tcp
}

public struct ServicePort: Sendable, Hashable, Codable {
    public var name: String
    public var `protocol`: TransportProtocol

    public init(name: String, protocol: TransportProtocol) {
        self.name = name
        self.protocol = `protocol`
    }
}

public enum TransportProtocol: String, Sendable, Hashable, Codable, CaseIterable {
    case tcp
    case udp
}

/// What an instance's health checks say.
public enum InstanceHealth: String, Sendable, Hashable, Codable, CaseIterable {
    /// Registered, checks not yet passed: no traffic.
    case starting
    case healthy
    /// Failing its checks: no traffic.
    case unhealthy
}

/// One instance of a service: where it listens (its sidecar's inbound port), where it
/// runs, how much it can take, and whether it may get traffic.
public struct InstanceResource: Sendable, Hashable, Codable {
    /// Unique across the registry; defaults to `<service>-<address>-<port>`.
    public var id: String
    public var service: String
    public var address: String
    public var port: Int
    public var zone: String?
    public var weight: Int = 1
    public var version: String?
    public var metadata: [String: String] = [:]
    public var health: InstanceHealth = .healthy
    /// Seconds the instance lives without a heartbeat; 0: no lease (lives until deleted).
    public var ttlSeconds: Int = 15

    public init(id: String, service: String, address: String, port: Int) {
        self.id = id
        self.service = service
        self.address = address
        self.port = port
    }

    /// The metadata key under which a sidecar registers its admin listener (`host:port`),
    /// where the controller opens taps.
    public static let adminMetadataKey = "meshwork.admin"

    /// Whether balancers may send to it.
    public var isServing: Bool { health == .healthy && weight > 0 }
}

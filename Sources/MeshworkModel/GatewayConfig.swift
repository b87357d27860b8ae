/// A public listener of the gateway (`meshwork gateway`): a fixed port in front of mesh
/// services whose instances come and go. HTTP and HTTPS listeners route each request by
/// host, path prefix and headers; a TCP listener sends every connection to one service.
public struct GatewayListenerConfig: Sendable, Hashable, Encodable {
    public var name: String
    public var listen: HostPort
    public var `protocol`: GatewayProtocol = .http
    /// HTTPS: the operator's certificates; the first is served when the client's SNI
    /// names none of the others' `serverNames`.
    public var certificates: [GatewayCertificate] = []
    /// HTTP/HTTPS: tried in order, the first match wins.
    public var routes: [GatewayRoute] = []
    /// TCP: the service every connection goes to.
    public var service: String?

    public init(name: String, listen: HostPort) {
        self.name = name
        self.listen = listen
    }

    /// The services this listener sends traffic to.
    public var services: [String] {
        routes.map(\.service) + (service.map { [$0] } ?? [])
    }
}

public enum GatewayProtocol: String, Sendable, Hashable, Encodable, CaseIterable {
    case http
    case https
    case tcp
}

public struct GatewayCertificate: Sendable, Hashable, Encodable {
    /// PEM certificate chain.
    public var cert: String
    /// PEM private key.
    public var key: String
    /// SNI names this certificate is served for (`shop.example.com`, `*.example.com`).
    public var serverNames: [String] = []

    public init(cert: String, key: String) {
        self.cert = cert
        self.key = key
    }
}

/// A match (host, path prefix, headers) and the service it sends to.
public struct GatewayRoute: Sendable, Hashable, Encodable {
    /// Hosts, lowercase (`shop.example.com`, or `*.example.com` for any subdomain); empty:
    /// any host.
    public var hosts: [String] = []
    public var pathPrefix: String = "/"
    /// Headers that must be present with exactly these values (names lowercased).
    public var headers: [String: String] = [:]
    public var service: String

    public init(service: String) {
        self.service = service
    }

    /// Whether a request matches: `host` without its port, `path` the request target.
    public func matches(host: String?, path: String, header: (String) -> String?) -> Bool {
        if !hosts.isEmpty {
            guard let host, hosts.contains(where: { Self.hostMatches(pattern: $0, host: host) }) else { return false }
        }
        guard RequestPath.hasPrefix(path[...], pathPrefix) else { return false }
        for (name, value) in headers where header(name) != value {
            return false
        }
        return true
    }

    /// `*.example.com` matches any name ending in `.example.com`. Both sides lowercase (the
    /// config loader lowercases patterns, `hostName` the request's host): no allocation per
    /// request.
    public static func hostMatches(pattern: String, host: String) -> Bool {
        if pattern.hasPrefix("*.") {
            return host.hasSuffix(pattern.dropFirst()) && host.utf8.count > pattern.utf8.count - 1
        }
        return host == pattern
    }

    /// The host of a Host header or an authority: lowercased, without port or final dot.
    public static func hostName(_ authority: Substring) -> String {
        var host = authority
        if host.hasPrefix("[") {
            if let end = host.firstIndex(of: "]") { host = host[...end] }
        } else if let colon = host.lastIndex(of: ":") {
            host = host[..<colon]
        }
        if host.hasSuffix(".") { host = host.dropLast() }
        return host.lowercased()
    }
}

extension [GatewayRoute] {
    /// The service of the first route that matches.
    public func service(host: String?, path: String, header: (String) -> String?) -> String? {
        first { $0.matches(host: host, path: path, header: header) }?.service
    }
}

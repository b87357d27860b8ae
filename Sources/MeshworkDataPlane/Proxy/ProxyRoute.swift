import MeshworkModel
import NIOHTTP1

/// How a proxying listener picks the cluster for a request.
enum ProxyRoute: Sendable {
    /// An upstream port: every request goes to one cluster.
    case cluster(String)
    /// The http-proxy port: the cluster is named by the Host (or absolute URI), with an
    /// optional port and an optional `.<domain>` suffix.
    case host(domain: String)
    /// The inbound listener: the local app.
    case app
    /// A gateway listener: the first of its routes (host, path prefix, headers) that
    /// matches names the service; the routes live in the loop context (a reload swaps them).
    case gateway(listener: String)

    /// Whether every request of a connection goes to the same cluster.
    var isFixed: Bool {
        switch self {
        case .cluster, .app: return true
        case .host, .gateway: return false
        }
    }

    func resolve(_ head: HTTPRequestHead, in loop: LoopContext) -> Result<LoopCluster, MeshError> {
        let cluster: LoopCluster?
        switch self {
        case .cluster(let name):
            cluster = loop.clusters[name]
        case .host(let domain):
            guard let name = Self.serviceName(head: head, domain: domain) else { return .failure(.noRoute) }
            cluster = loop.clusters[name]
        case .app:
            cluster = loop.app
        case .gateway(let listener):
            guard let routes = loop.gatewayRoutes[listener],
                let service = Self.gatewayService(head: head, routes: routes)
            else { return .failure(.noRoute) }
            cluster = loop.clusters[service]
        }
        return cluster.map { .success($0) } ?? .failure(.noRoute)
    }

    static func gatewayService(head: HTTPRequestHead, routes: [GatewayRoute]) -> String? {
        let authority = absoluteURIAuthority(head.uri) ?? head.headers.first(name: "host").map { Substring($0) }
        return routes.service(
            host: authority.map(GatewayRoute.hostName),
            path: originForm(head.uri),
            header: { head.headers.first(name: $0) }
        )
    }

    /// `orders`, `orders:80`, `orders.mesh`, `orders.mesh.:8080` and
    /// `http://orders.mesh/path` all name the service `orders`.
    static func serviceName(head: HTTPRequestHead, domain: String) -> String? {
        var host: Substring
        if let authority = absoluteURIAuthority(head.uri) {
            host = authority
        } else if let value = head.headers.first(name: "host") {
            host = Substring(value)
        } else {
            return nil
        }
        if host.hasPrefix("[") { return nil }  // an IP literal names no service
        if let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        if host.hasSuffix(".") { host = host.dropLast() }
        var name = host.lowercased()
        if !domain.isEmpty, name.hasSuffix("." + domain) {
            name.removeLast(domain.count + 1)
        }
        return name.isEmpty ? nil : name
    }

    /// The authority of an absolute-form request target (`http://host:port/path`), as sent
    /// to a forward proxy.
    static func absoluteURIAuthority(_ uri: String) -> Substring? {
        // The cheap test first: every request asks, and almost all are origin-form.
        guard uri.utf8.first != UInt8(ascii: "/"), let schemeEnd = uri.firstRange(of: "://") else { return nil }
        let rest = uri[schemeEnd.upperBound...]
        let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        return rest[..<end]
    }

    /// The origin-form target (`/path?query`) of an absolute-form request target.
    static func originForm(_ uri: String) -> String {
        guard uri.utf8.first != UInt8(ascii: "/"), let schemeEnd = uri.firstRange(of: "://") else { return uri }
        let rest = uri[schemeEnd.upperBound...]
        guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
        let path = rest[slash...]
        return path.hasPrefix("?") ? "/" + path : String(path)
    }
}

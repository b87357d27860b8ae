import NIOHTTP1
import Testing

@testable import MeshworkDataPlane

@Suite("Routing by Host")
struct ProxyRouteTests {
    private func head(_ uri: String, host: String?) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        if let host { headers.add(name: "Host", value: host) }
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: headers)
    }

    @Test(arguments: [
        ("/", "orders", "orders"),
        ("/", "orders:8080", "orders"),
        ("/", "orders.mesh", "orders"),
        ("/", "Orders.Mesh.:80", "orders"),
        ("/", "orders.other", "orders.other"),
        ("http://inventory.mesh/items?id=1", "ignored", "inventory"),
        ("http://inventory:9000", nil, "inventory"),
    ])
    func serviceNameFromHost(uri: String, host: String?, expected: String) {
        #expect(ProxyRoute.serviceName(head: head(uri, host: host), domain: "mesh") == expected)
    }

    @Test func noHostNoService() {
        #expect(ProxyRoute.serviceName(head: head("/", host: nil), domain: "mesh") == nil)
        #expect(ProxyRoute.serviceName(head: head("/", host: "[::1]:80"), domain: "mesh") == nil)
    }

    @Test(arguments: [
        ("http://orders/a/b?c=d", "/a/b?c=d"),
        ("http://orders", "/"),
        ("http://orders?x=1", "/?x=1"),
        ("/already", "/already"),
    ])
    func originForm(uri: String, expected: String) {
        #expect(ProxyRoute.originForm(uri) == expected)
    }

    /// A mirrored copy's host says it is one (Envoy's convention), its port kept.
    @Test(arguments: [
        ("orders", "orders-shadow"), ("orders:8080", "orders-shadow:8080"), ("[::1]", "[::1]-shadow"),
        ("[::1]:80", "[::1]-shadow:80"),
    ])
    func mirroredHost(host: String, expected: String) {
        #expect(MirrorExchange.shadow(host) == expected)
    }
}

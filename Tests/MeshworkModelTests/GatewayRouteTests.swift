import MeshworkModel
import Testing

@Suite struct GatewayRouteTests {
    func route(
        _ service: String,
        hosts: [String] = [],
        prefix: String = "/",
        headers: [String: String] = [:]
    )
        -> GatewayRoute
    {
        var route = GatewayRoute(service: service)
        route.hosts = hosts
        route.pathPrefix = prefix
        route.headers = headers
        return route
    }

    @Test func pathPrefixesMatchWholeSegments() {
        let api = route("orders", prefix: "/api")
        #expect(api.matches(host: nil, path: "/api", header: { _ in nil }))
        #expect(api.matches(host: nil, path: "/api/items", header: { _ in nil }))
        #expect(api.matches(host: nil, path: "/api?q=1", header: { _ in nil }))
        #expect(!api.matches(host: nil, path: "/apis", header: { _ in nil }))
        #expect(route("x", prefix: "/api/").matches(host: nil, path: "/api/x", header: { _ in nil }))
        #expect(route("x").matches(host: nil, path: "/anything", header: { _ in nil }))
    }

    @Test func hostsExactOrWildcardAndHeadersExact() {
        let shop = route("web", hosts: ["shop.example.com", "*.shop.example.com"])
        #expect(shop.matches(host: "shop.example.com", path: "/", header: { _ in nil }))
        #expect(shop.matches(host: "a.b.shop.example.com", path: "/", header: { _ in nil }))
        #expect(!shop.matches(host: "evilshop.example.com", path: "/", header: { _ in nil }))
        #expect(!shop.matches(host: nil, path: "/", header: { _ in nil }))
        #expect(GatewayRoute.hostName("Shop.Example.COM.:8443") == "shop.example.com")
        #expect(GatewayRoute.hostName("[::1]:80") == "[::1]")
        let canary = route("orders-canary", headers: ["x-canary": "1"])
        #expect(canary.matches(host: nil, path: "/", header: { $0 == "x-canary" ? "1" : nil }))
        #expect(!canary.matches(host: nil, path: "/", header: { $0 == "x-canary" ? "0" : nil }))
        #expect(!canary.matches(host: nil, path: "/", header: { _ in nil }))
    }

    @Test func firstMatchWinsAndYAMLLowercasesHosts() throws {
        let config = try SidecarConfig.load(
            yaml: """
                clusters:
                  - {name: orders, protocol: http1, endpoints: [127.0.0.1:9001]}
                  - {name: web, protocol: http1, endpoints: [127.0.0.1:9002]}
                listeners:
                  - name: public
                    listen: 127.0.0.1:0
                    routes:
                      - match: {host: Shop.Example.com, pathPrefix: /api}
                        service: orders
                      - service: web
                """
        )
        let routes = config.listeners[0].routes
        #expect(routes[0].hosts == ["shop.example.com"])
        #expect(routes.service(host: "shop.example.com", path: "/api/1", header: { _ in nil }) == "orders")
        #expect(routes.service(host: "shop.example.com", path: "/", header: { _ in nil }) == "web")
        #expect(routes.service(host: nil, path: "/api", header: { _ in nil }) == "web")
    }
}

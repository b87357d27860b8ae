import Foundation
import MeshworkDemo
import Testing

/// HTTPRoutes whose parent is a gateway listener (`kind: Gateway`), applied through the
/// controller to a running `meshwork gateway`: hostnames (exact before wildcard before
/// none), matches to version subsets, the listener's own configured routes as the
/// fallback, and removal, each within one push. Real processes, real curl, 127.0.0.1.
@Suite("Gateway HTTPRoutes end to end", .serialized)
struct GatewayHTTPRouteTests {
    private static let shop = """
        kind: HTTPRoute
        name: shop
        parentRefs: [{kind: Gateway, name: edge, sectionName: public}]
        hostnames: [shop.example.test, "*.shop.example.test"]
        rules:
          - name: beta
            matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-beta, value: "1"}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: api
            matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs: [{name: orders, version: v1}]
            filters:
              - type: ResponseHeaderModifier
                responseHeaderModifier: {set: [{name: x-route, value: shop}]}
          - name: split
            matches: [{path: {type: PathPrefix, value: /split}}]
            backendRefs: [{name: orders, version: v1, weight: 80}, {name: orders, version: v2, weight: 20}]
          - name: broken
            matches: [{path: {type: PathPrefix, value: /broken}}]
            backendRefs: [{name: orders, version: v1}]
            filters: [{type: Fault, fault: {abort: {httpStatus: 503, percent: 25}}}]
        """

    /// Every listener of the gateway (no sectionName), one exact host.
    private static let eu = """
        kind: HTTPRoute
        name: shop-eu
        parentRefs: [{kind: Gateway, name: edge}]
        hostnames: [eu.shop.example.test]
        rules:
          - backendRefs: [{name: orders, version: v2}]
        """

    private func get(_ port: Int, host: String, _ path: String, _ headers: [String] = []) async throws -> CurlResult {
        try await Curl.run(
            ["-H", "Host: \(host)"] + headers.flatMap { ["-H", $0] } + ["http://127.0.0.1:\(port)\(path)"]
        )
    }

    @Test func aGatewayListenersRoutesMatchHostnamesBeforeItsOwnRoutesAndFollowTheController() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let v1 = try await TestMesh.startApp("orders-1")
        let v2 = try await TestMesh.startApp("orders-2")
        let web = try await TestMesh.startApp("web-1")
        var processes: [SidecarProcess] = []
        let configFile = controller.dataDirectory + "-gateway.yaml"
        defer {
            try? FileManager.default.removeItem(atPath: configFile)
            controller.remove()
        }
        do {
            processes.append(
                try await startServer("orders", app: v1, controller: controller, extra: ["--version", "v1"])
            )
            processes.append(
                try await startServer("orders", app: v2, controller: controller, extra: ["--version", "v2"])
            )
            processes.append(try await startServer("web", app: web, controller: controller))

            // Refused, with the field: a gateway rule that names no backend, an IP hostname.
            let bad = try await controller.call(
                "PUT",
                "/v1/routes/bad",
                body:
                    #"{"parentRefs": [{"kind": "Gateway", "name": "edge"}], "hostnames": ["10.0.0.1"], "rules": [{}]}"#
            )
            #expect(bad.status == 400, "\(bad.text)")
            #expect(bad.text.contains("rules[0].backendRefs") && bad.text.contains("hostnames[0]"), "\(bad.text)")

            // `public` has its own configured route (everything to web); `bare` has none.
            try """
            service: edge
            admin: 127.0.0.1:0
            controller:
              url: \(controller.url)
              joinTokenFile: \(try await controller.joinTokenFile("edge"))
            listeners:
              - name: public
                listen: 127.0.0.1:0
                routes:
                  - service: web
              - name: bare
                listen: 127.0.0.1:0
            """.write(toFile: configFile, atomically: true, encoding: .utf8)
            let gateway = try await SidecarProcess.start(
                ["--config", configFile],
                waitFor: ["gateway:public", "gateway:bare", "admin"],
                command: "gateway"
            )
            processes.append(gateway)
            let public_ = gateway.port("gateway:public") ?? 0
            let bare = gateway.port("gateway:bare") ?? 0
            #expect(
                try await eventually {
                    try await get(public_, host: "shop.example.test", "/api/x").text == "hello from web-1\n"
                },
                "\(gateway.log)"
            )

            #expect(try await controller.apply(Self.shop + "\n---\n" + Self.eu).exitCode == 0)
            #expect(
                try await eventually {
                    let answer = try await get(public_, host: "shop.example.test", "/api/items")
                    return answer.text == "hello from orders-1\n" && answer.header("x-route") == "shop"
                },
                "\(gateway.log)"
            )
            let beta = try await get(public_, host: "shop.example.test", "/api/items", ["x-beta: 1"])
            #expect(beta.text == "hello from orders-2\n", "\(beta.text)")
            // The same route engine as a caller's sidecar: an exact 80/20 split over one
            // connection, and a 25% abort answered by the gateway, labelled as the fault.
            var before = (v1.requestCount, v2.requestCount)
            let split = try await Curl.run(
                ["-H", "Host: shop.example.test", "http://127.0.0.1:\(public_)/split?n=[1-200]"],
                timeout: 60
            )
            #expect(split.statusLines.filter { $0.contains(" 200") }.count == 200, "\(split.statusLines)")
            #expect(
                v1.requestCount - before.0 == 160 && v2.requestCount - before.1 == 40,
                "\(v2.requestCount - before.1) to v2"
            )
            before = (v1.requestCount, v2.requestCount)
            let broken = try await Curl.run(
                ["-H", "Host: shop.example.test", "http://127.0.0.1:\(public_)/broken?n=[1-200]"],
                timeout: 60
            )
            #expect(broken.statusLines.filter { $0.contains(" 503") }.count == 50, "\(broken.statusLines)")
            #expect(v1.requestCount - before.0 == 150 && v2.requestCount == before.1)
            var last: [(String, String)] = []
            let labelled = try await eventually {
                let answer = try await get(public_, host: "shop.example.test", "/broken/y")
                last = answer.headers
                return answer.status == 503 && answer.header("x-meshwork-error") == "fault_abort"
            }
            #expect(labelled, "\(last)")
            // A wildcard covers names below it (any depth), with the port and case ignored.
            let wildcard = try await get(public_, host: "A.b.Shop.example.test:8080", "/api")
            #expect(wildcard.text == "hello from orders-1\n", "\(wildcard.text)")
            // The exact hostname's route decides before the wildcard's, whose /api rule also matches.
            #expect(
                try await eventually {
                    try await get(public_, host: "eu.shop.example.test", "/api").text == "hello from orders-2\n"
                }
            )
            // No rule of the host's routes matches, or another host: the listener's own route.
            let other = try await get(public_, host: "shop.example.test", "/cart")
            #expect(other.text == "hello from web-1\n", "\(other.text)")
            let apex = try await get(public_, host: "example.test", "/api")
            #expect(apex.text == "hello from web-1\n", "\(apex.text)")
            // `shop` names the public listener only; `shop-eu` every listener.
            let unattached = try await get(bare, host: "shop.example.test", "/api")
            #expect(unattached.status == 404 && unattached.header("x-meshwork-error") == "no_route")
            let everywhere = try await get(bare, host: "eu.shop.example.test", "/")
            #expect(everywhere.text == "hello from orders-2\n", "\(everywhere.text)")

            // The route's status names the gateway that applies it.
            let status = try await controller.call("GET", "/v1/routes/shop")
            #expect(status.text.contains("applied by gateway edge (listener public)"), "\(status.text)")

            // A gateway rule to the whole service hands the request to orders' own routes: a
            // rollout's split holds at the edge (exact over one connection), and its abort
            // sends everything back to stable there, within one push.
            #expect(
                try await controller.apply(
                    """
                    kind: HTTPRoute
                    name: shop-all
                    parentRefs: [{kind: Gateway, name: edge, sectionName: public}]
                    hostnames: [all.shop.example.test]
                    rules:
                      - backendRefs: [{name: orders}]
                        filters:
                          - type: ResponseHeaderModifier
                            responseHeaderModifier: {set: [{name: x-edge, value: "1"}]}
                    ---
                    kind: Rollout
                    name: orders-edge
                    service: orders
                    stable: v1
                    canary: v2
                    steps: [{setWeight: 25}, {pause: {}}]
                    """
                ).exitCode == 0
            )
            #expect(
                try await eventually {
                    try await get(public_, host: "all.shop.example.test", "/").header("x-edge") == "1"
                },
                "\(gateway.log)"
            )
            var counted = (0, 0)
            #expect(
                try await eventually {
                    let before = (v1.requestCount, v2.requestCount)
                    let answers = try await Curl.run(
                        ["-H", "Host: all.shop.example.test", "http://127.0.0.1:\(public_)/?n=[1-200]"],
                        timeout: 60
                    )
                    counted = (v1.requestCount - before.0, v2.requestCount - before.1)
                    return answers.statusLines.filter { $0.contains(" 200") }.count == 200 && counted == (150, 50)
                },
                "v1, v2: \(counted)\n\(gateway.log)"
            )
            #expect(
                try await Command.run([
                    CLITests.binary, "ctl", "rollout", "abort", "orders-edge", "--controller", controller.url,
                    "--token-file", controller.dataDirectory + "/token",
                ]).exitCode == 0
            )
            #expect(
                try await eventually {
                    let before = v2.requestCount
                    let answers = try await Curl.run(
                        ["-H", "Host: all.shop.example.test", "http://127.0.0.1:\(public_)/?n=[1-40]"]
                    )
                    return answers.statusLines.filter { $0.contains(" 200") }.count == 40 && v2.requestCount == before
                },
                "\(gateway.log)"
            )
            #expect(try await controller.call("DELETE", "/v1/rollouts/orders-edge").status == 200)
            #expect(try await controller.call("DELETE", "/v1/routes/shop-all").status == 200)

            // Removed: the listener's own route again, within one push.
            #expect(try await controller.call("DELETE", "/v1/routes/shop").status == 200)
            #expect(
                try await eventually {
                    try await get(public_, host: "shop.example.test", "/api").text == "hello from web-1\n"
                },
                "\(gateway.log)"
            )
            let kept = try await get(public_, host: "eu.shop.example.test", "/api")
            #expect(kept.text == "hello from orders-2\n", "\(kept.text)")
        } catch {
            Issue.record("\(error)")
        }
        for process in processes { await process.stop() }
        await v1.stop()
        await v2.stop()
        await web.stop()
        await controller.stop()
    }
}

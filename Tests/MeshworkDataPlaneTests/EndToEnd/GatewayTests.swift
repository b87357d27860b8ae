import Foundation
import MeshworkDemo
import Testing

/// `meshwork gateway`: fixed public listeners (HTTP, HTTPS with SNI, TCP) in front of mesh
/// services whose instances come and go; it joins the mesh with its own identity and
/// reaches every instance over mTLS. Real processes, real curl, 127.0.0.1 only.
@Suite("Gateway end to end", .serialized)
struct GatewayTests {
    /// A self-signed certificate for `host` (what an operator brings for a public name).
    private func certificate(_ host: String, in directory: String) async throws -> (cert: String, key: String) {
        let cert = directory + "/\(host).pem"
        let key = directory + "/\(host).key"
        let result = try await Command.run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=\(host)", "-addext", "subjectAltName=DNS:\(host)",
        ])
        #expect(result.exitCode == 0, "\(result.output)")
        return (cert, key)
    }

    /// Bounded: GETs until `check` holds for an answer (100 tries, 10 s).
    private func until(_ arguments: [String], _ check: (CurlResult) -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        for _ in 0..<100 where ContinuousClock.now < deadline {
            if check(try await Curl.run(arguments)) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    private func gatewayConfig(
        controller: ControllerProcess,
        tokenFile: String,
        shop: (cert: String, key: String),
        api: (cert: String, key: String),
        extraRoutes: String = ""
    ) -> String {
        """
        service: edge
        admin: 127.0.0.1:0
        controller:
          url: \(controller.url)
          joinTokenFile: \(tokenFile)
        listeners:
          - name: public
            listen: 127.0.0.1:0
            routes:
        \(extraRoutes)
              - match: {host: shop.example.test, pathPrefix: /api}
                service: orders
              - match: {headers: {x-canary: "1"}}
                service: orders
              - match: {hosts: [web.example.test, "*.web.example.test"]}
                service: web
          - name: secure
            listen: 127.0.0.1:0
            protocol: https
            certificates:
              - {cert: \(shop.cert), key: \(shop.key), serverNames: [shop.example.test]}
              - {cert: \(api.cert), key: \(api.key), serverNames: [api.example.test]}
            routes:
              - match: {host: api.example.test}
                service: web
              - service: orders
          - name: raw
            listen: 127.0.0.1:0
            protocol: tcp
            service: legacy
        """
    }

    @Test func routesHTTPHTTPSAndTCPToMeshServicesAsInstancesComeAndGo() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-gw"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let apps = [
            try await TestMesh.startApp("orders-1"), try await TestMesh.startApp("orders-2"),
            try await TestMesh.startApp("web-1"), try await TestMesh.startApp("legacy-1"),
            try await TestMesh.startApp("orders-3"), try await TestMesh.startApp("inventory-1"),
        ]
        var processes: [SidecarProcess] = []
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            let orders1 = try await startServer("orders", app: apps[0], controller: controller)
            processes.append(orders1)
            processes.append(try await startServer("orders", app: apps[1], controller: controller))
            processes.append(try await startServer("web", app: apps[2], controller: controller))
            processes.append(
                try await startServer("legacy", app: apps[3], controller: controller, extra: ["--app-protocol", "tcp"])
            )
            let shop = try await certificate("shop.example.test", in: directory)
            let api = try await certificate("api.example.test", in: directory)
            let configFile = directory + "/gateway.yaml"
            let tokenFile = try await controller.joinTokenFile("edge")
            try gatewayConfig(controller: controller, tokenFile: tokenFile, shop: shop, api: api)
                .write(toFile: configFile, atomically: true, encoding: .utf8)
            let check = try await Command.run([CLITests.binary, "gateway", "--config", configFile, "--check"])
            #expect(check.exitCode == 0, "\(check.output)")
            let gateway = try await SidecarProcess.start(
                ["--config", configFile],
                waitFor: ["gateway:public", "gateway:secure", "gateway:raw", "admin"],
                command: "gateway"
            )
            processes.append(gateway)
            #expect(try await gateway.waitForLog("workload certificate issued"), "\(gateway.log)")
            let publicPort = gateway.port("gateway:public") ?? 0
            let securePort = gateway.port("gateway:secure") ?? 0
            let public_ = "http://127.0.0.1:\(publicPort)"

            // HTTP: host + path prefix, a header, a wildcard host; nothing else matches.
            #expect(
                try await until(["-H", "Host: shop.example.test", public_ + "/api/items"]) {
                    $0.status == 200 && $0.text.hasPrefix("hello from orders-")
                },
                "\(gateway.log)"
            )
            let apis = try await Curl.run(["-H", "Host: shop.example.test", public_ + "/apis"])
            #expect(apis.status == 404 && apis.header("x-meshwork-error") == "no_route")
            let canary = try await Curl.run(["-H", "x-canary: 1", public_ + "/anything"])
            #expect(canary.status == 200 && canary.text.hasPrefix("hello from orders-"))
            #expect(
                try await until(["-H", "Host: a.web.example.test", public_ + "/"]) { $0.text == "hello from web-1\n" }
            )
            let h2c = try await Curl.run(["--http2-prior-knowledge", "-H", "Host: web.example.test", public_ + "/"])
            #expect(h2c.status == 200 && h2c.text == "hello from web-1\n")

            // HTTPS: the certificate SNI names (curl verifies each against its own CA), ALPN h2.
            let shopCall = try await Curl.run([
                "--cacert", shop.cert, "--resolve", "shop.example.test:\(securePort):127.0.0.1",
                "https://shop.example.test:\(securePort)/",
            ])
            #expect(shopCall.status == 200 && shopCall.text.hasPrefix("hello from orders-"), "\(shopCall.stderr)")
            #expect(shopCall.statusLines.first?.hasPrefix("HTTP/2") == true)
            let apiCall = try await Curl.run([
                "--http1.1", "--cacert", api.cert, "--resolve", "api.example.test:\(securePort):127.0.0.1",
                "https://api.example.test:\(securePort)/",
            ])
            #expect(apiCall.status == 200 && apiCall.text == "hello from web-1\n", "\(apiCall.stderr)")

            // TCP: every byte to the one service (its sidecar speaks TCP to its app).
            #expect(
                try await until([
                    "http://127.0.0.1:\(gateway.port("gateway:raw") ?? 0)/"
                ]) { $0.text == "hello from legacy-1\n" }
            )

            // Instances come and go: orders-1 leaves, orders-3 arrives; no failed call.
            await orders1.stop()
            processes.removeFirst()
            var failures = 0
            var servedBy: Set<String> = []
            for _ in 0..<30 {
                let answer = try await Curl.run(["-H", "x-canary: 1", public_ + "/"])
                if answer.status != 200 { failures += 1 }
                servedBy.insert(answer.text)
            }
            #expect(failures == 0)
            #expect(servedBy.contains("hello from orders-2\n"))
            processes.append(try await startServer("orders", app: apps[4], controller: controller))
            #expect(try await until(["-H", "x-canary: 1", public_ + "/"]) { $0.text == "hello from orders-3\n" })

            // Reload (SIGHUP): a route to a service it did not know, while a slow call is in
            // flight on an open connection; the slow call finishes.
            processes.append(try await startServer("inventory", app: apps[5], controller: controller))
            async let slow = Curl.run(["-H", "x-canary: 1", public_ + "/delay/1500"])
            // The slow call has reached an orders app (orders-2 or orders-3) before the reload.
            let reached = ContinuousClock.now + .seconds(5)
            while apps[1].sleepingCount + apps[4].sleepingCount == 0, ContinuousClock.now < reached {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(apps[1].sleepingCount + apps[4].sleepingCount == 1, "the slow call never reached orders")
            try gatewayConfig(
                controller: controller,
                tokenFile: tokenFile,
                shop: shop,
                api: api,
                extraRoutes: "      - match: {pathPrefix: /stock}\n        service: inventory\n"
            ).write(toFile: configFile, atomically: true, encoding: .utf8)
            gateway.signal(SIGHUP)
            #expect(try await gateway.waitForLog("gateway routes reloaded"), "\(gateway.log)")
            #expect(try await until([public_ + "/stock/1"]) { $0.text == "hello from inventory-1\n" }, "\(gateway.log)")
            let slowAnswer = try await slow
            #expect(slowAnswer.status == 200, "\(slowAnswer.stderr)")

            // A bad reload is refused, named, and the running routes stay.
            try "listeners:\n  - name: public\n    listen: 127.0.0.1:1\n    routes: []\n"
                .write(toFile: configFile, atomically: true, encoding: .utf8)
            gateway.signal(SIGHUP)
            #expect(try await gateway.waitForLog("reload refused"), "\(gateway.log)")
            #expect(gateway.log.contains("listeners[0].routes"))
            #expect(try await Curl.run([public_ + "/stock/2"]).text == "hello from inventory-1\n")

            // Its own metrics, per listener.
            let metrics = try await Curl.get("http://127.0.0.1:\(gateway.port("admin") ?? 0)/metrics").text
            #expect(metrics.contains(#"listener="gateway:public""#))
            #expect(metrics.contains(#"listener="gateway:secure""#))
        } catch {
            Issue.record("\(error)")
        }
        for process in processes { await process.stop() }
        await controller.stop()
    }

    @Test func badGatewayConfigsAreRefusedWithTheField() async throws {
        let directory = NSTemporaryDirectory() + "mw-gwcfg-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cases: [(String, String)] = [
            ("admin: off\n", "listeners: a gateway needs at least one listener"),
            (
                "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    protocol: https\n    routes: [{service: x}]\n",
                "listeners[0].certificates: an https listener needs at least one certificate"
            ),
            (
                "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    protocol: tcp\n",
                "listeners[0].service: a tcp listener needs the service"
            ),
            (
                "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    routes: [{service: nowhere}]\n",
                "listeners[0].routes: no cluster named \"nowhere\""
            ),
            (
                "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    routes: [{match: {pathPrefix: api}, service: x}]\n",
                "listeners[0].routes[0].match.pathPrefix: must start with /"
            ),
            (
                "controller: {url: http://127.0.0.1:1}\nlisteners:\n  - name: a\n    listen: 127.0.0.1:0\n    protocol: https\n    certificates: [{cert: /nonexistent.pem, key: /nonexistent.key}]\n    routes: [{service: x}]\n",
                "listeners[0].certificates[0].cert: cannot load /nonexistent.pem"
            ),
        ]
        for (index, (yaml, message)) in cases.enumerated() {
            let file = directory + "/\(index).yaml"
            try yaml.write(toFile: file, atomically: true, encoding: .utf8)
            // --check finds what a start would (the certificate files too), and so does a start.
            for arguments in [["gateway", "--config", file, "--check"], ["gateway", "--config", file]] {
                let result = try await Command.run([CLITests.binary] + arguments)
                #expect(result.exitCode != 0 && result.output.contains(message), "\(arguments): \(result.output)")
            }
        }
    }
}

import Foundation
import MeshworkDemo
import Testing

/// Workload identity end to end: join tokens, certificates from the controller's CA,
/// sidecar credentials, and mTLS between sidecars that check who they talk to.
@Suite("Zero trust end to end", .serialized)
struct ZeroTrustTests {
    /// A P-256 key and a CSR made by openssl (any standard CSR is accepted).
    private func opensslCSR(in directory: String, name: String = "workload") async throws -> String {
        let key = directory + "/\(name).key"
        let csr = directory + "/\(name).csr"
        let result = try await Command.run([
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=workload",
        ])
        #expect(result.exitCode == 0, "\(result.output)")
        return try String(contentsOfFile: csr, encoding: .utf8)
    }

    private func json(_ result: CurlResult) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: result.body) as? [String: Any]) ?? [:]
    }

    private func certificateRequest(_ fields: [String: String]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
    }

    @Test func joinTokensCertificatesAndSidecarCredentialsAreScoped() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-work"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            let csr = try await opensslCSR(in: directory)
            let token = try await controller.joinToken("orders")
            let issued = try await controller.call(
                "POST",
                "/v1/certificates",
                body: try certificateRequest(["csr": csr, "token": token, "instance": "orders-a"]),
                authorized: false
            )
            #expect(issued.status == 200, "\(issued.text)")
            let fields = json(issued)
            #expect(fields["spiffeID"] as? String == "spiffe://mesh.local/service/orders")
            let credential = try #require(fields["credential"] as? String)

            // The certificate is an X.509-SVID that openssl verifies against the bundle.
            let certificate = directory + "/orders.pem"
            let bundle = directory + "/bundle.pem"
            try (fields["certificate"] as? String ?? "").write(toFile: certificate, atomically: true, encoding: .utf8)
            try (fields["trustBundle"] as? String ?? "").write(toFile: bundle, atomically: true, encoding: .utf8)
            let text = try await Command.run(["openssl", "x509", "-noout", "-text", "-in", certificate]).output
            #expect(text.contains("URI:spiffe://mesh.local/service/orders"), "\(text)")
            #expect(text.contains("CA:FALSE"))
            #expect(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
            let verify = try await Command.run(["openssl", "verify", "-CAfile", bundle, certificate])
            #expect(verify.exitCode == 0, "\(verify.output)")
            let served = try await controller.call("GET", "/v1/trust-bundle", authorized: false)
            #expect(served.text == (try String(contentsOfFile: bundle, encoding: .utf8)))

            // A used token, an unknown one and an expired one are refused, and counted.
            let reused = try await controller.call(
                "POST",
                "/v1/certificates",
                body: try certificateRequest(["csr": csr, "token": token]),
                authorized: false
            )
            #expect(reused.status == 401)
            #expect(reused.text.contains("no uses left"), "\(reused.text)")
            let unknown = try await controller.call(
                "POST",
                "/v1/certificates",
                body: try certificateRequest(["csr": csr, "token": "abc.def"]),
                authorized: false
            )
            #expect(unknown.status == 401)
            let shortLived = try await controller.joinToken("orders", ttl: "1s")
            try await Task.sleep(for: .milliseconds(1200))
            let expired = try await controller.call(
                "POST",
                "/v1/certificates",
                body: try certificateRequest(["csr": csr, "token": shortLived]),
                authorized: false
            )
            #expect(expired.status == 401)
            #expect(expired.text.contains("expired"), "\(expired.text)")
            let garbage = try await controller.call(
                "POST",
                "/v1/certificates",
                body: try certificateRequest(["csr": "not a csr", "token": try await controller.joinToken("orders")]),
                authorized: false
            )
            #expect(garbage.status == 400)
            #expect(json(garbage)["errors"].map { "\($0)" }?.contains("csr") == true, "\(garbage.text)")

            // The sidecar credential writes its own instance, and nothing else.
            let own = #"{"service": "orders", "address": "127.0.0.1", "port": 1}"#
            let put = try await controller.call("PUT", "/v1/instances/orders-a", body: own, bearer: credential)
            #expect(put.status == 200, "\(put.text)")
            let heartbeat = try await controller.call(
                "POST",
                "/v1/instances/orders-a/heartbeat",
                body: #"{"health": "healthy"}"#,
                bearer: credential
            )
            #expect(heartbeat.status == 200)
            let otherInstance = try await controller.call(
                "PUT",
                "/v1/instances/orders-b",
                body: own,
                bearer: credential
            )
            #expect(otherInstance.status == 403, "\(otherInstance.text)")
            let otherService = try await controller.call(
                "PUT",
                "/v1/instances/orders-a",
                body: #"{"service": "payments", "address": "127.0.0.1", "port": 1}"#,
                bearer: credential
            )
            #expect(otherService.status == 403, "\(otherService.text)")
            let policy = try await controller.call(
                "PUT",
                "/v1/services/orders",
                body: #"{"name": "orders"}"#,
                bearer: credential
            )
            #expect(policy.status == 403)
            let tokenMint = try await controller.call(
                "POST",
                "/v1/tokens",
                body: #"{"service": "payments"}"#,
                bearer: credential
            )
            #expect(tokenMint.status == 403, "a sidecar credential minted a join token")

            // Nothing else was disturbed.
            let listed = try await controller.call("GET", "/v1/instances", authorized: false)
            #expect(listed.text.contains("orders-a") && !listed.text.contains("orders-b"))
            #expect(
                try await controller.metric(#"meshwork_controller_api_refusals_total{reason="join_token_used"}"#) == 1
            )
            #expect(
                try await controller.metric(#"meshwork_controller_api_refusals_total{reason="join_token_invalid"}"#)
                    == 1
            )
            #expect(
                try await controller.metric(#"meshwork_controller_api_refusals_total{reason="join_token_expired"}"#)
                    == 1
            )
            #expect(try await controller.metric(#"meshwork_controller_api_refusals_total{reason="forbidden"}"#) == 4)
            #expect(
                try await controller.metric(#"meshwork_controller_certificates_issued_total{via="join_token"}"#) == 1
            )
        } catch {
            await controller.stop()
            throw error
        }
        await controller.stop()
    }

    /// A controller with the operator's CA (the test fixtures' mesh CA), so the tests can
    /// also present certificates from it that are expired or carry no identity.
    private func startController() async throws -> ControllerProcess {
        try await ControllerProcess.start(
            dataDirectory: nil,
            ["--ca-cert", TestMesh.certs + "/mesh-ca.pem", "--ca-key", TestMesh.certs + "/mesh-ca.key"]
        )
    }

    private func startClient(
        _ service: String = "web",
        controller: ControllerProcess,
        extra: [String] = []
    ) async throws -> SidecarProcess {
        let sidecar = try await SidecarProcess.start(
            [
                "--service", service, "--controller", controller.url, "--upstream", "orders=127.0.0.1:0",
                "--join-token-file", try await controller.joinTokenFile(service),
            ] + extra,
            waitFor: ["upstream:orders"]
        )
        #expect(try await sidecar.waitForLog("workload certificate issued"), "\(sidecar.log)")
        return sidecar
    }

    /// GETs `url` until it answers 200 (bounded: 100 tries, 10 s).
    private func until200(_ url: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        for _ in 0..<100 where ContinuousClock.now < deadline {
            if try await Curl.get(url).status == 200 { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// A credential of one service (not bound to an instance) cannot take over another
    /// service's instance by naming its own service in the body, nor delete it.
    @Test func aServiceCredentialCannotTakeOverAnotherServicesInstance() async throws {
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-work"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            let payments = #"{"service": "payments", "address": "127.0.0.1", "port": 7001}"#
            #expect(try await controller.call("PUT", "/v1/instances/payments-1", body: payments).status == 200)
            let web = try await controller.issueWorkload("web", in: directory)
            let takeover = try await controller.call(
                "PUT",
                "/v1/instances/payments-1",
                body: #"{"service": "web", "address": "127.0.0.1", "port": 6666}"#,
                bearer: web.credential
            )
            #expect(takeover.status == 403, "\(takeover.text)")
            let deleted = try await controller.call("DELETE", "/v1/instances/payments-1", bearer: web.credential)
            #expect(deleted.status == 403, "\(deleted.text)")
            let kept = try await controller.call("GET", "/v1/instances/payments-1")
            #expect(kept.status == 200 && kept.text.contains("7001") && kept.text.contains("payments"), "\(kept.text)")
            // Its own service's instances it may register.
            let own = try await controller.call(
                "PUT",
                "/v1/instances/web-1",
                body: #"{"service": "web", "address": "127.0.0.1", "port": 6001}"#,
                bearer: web.credential
            )
            #expect(own.status == 200, "\(own.text)")
        } catch {
            Issue.record("\(error)")
        }
        await controller.stop()
    }

    @Test func sidecarsOnJoinTokensTalkOverMTLSAndRefuseEveryOtherPeer() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await startController()
        let orders = try await TestMesh.startApp("orders-1")
        let payments = try await TestMesh.startApp("payments-1")
        var sidecars: [SidecarProcess] = []
        do {
            let server = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(server)
            let client = try await startClient(controller: controller)
            sidecars.append(client)
            let url = "http://127.0.0.1:\(client.port("upstream:orders") ?? 0)/hello"
            #expect(try await until200(url), "web never reached orders: \(client.log)")
            #expect(orders.requestCount > 0)

            // The inbound listener is strict: no plaintext, no TLS without a client
            // certificate, none from another CA, none expired.
            let inbound = "127.0.0.1:\(server.port("inbound") ?? 0)"
            let before = orders.requestCount
            let plaintext = try await Curl.get("http://\(inbound)/")
            #expect(plaintext.status == 0, "plaintext got \(plaintext.status)")
            let anonymous = try await Curl.get("https://\(inbound)/", ["-k"])
            #expect(anonymous.status == 0)
            for name in ["rogue", "expired"] {
                let refused = try await Curl.get(
                    "https://\(inbound)/",
                    ["-k", "--cert", TestMesh.certs + "/\(name).pem", "--key", TestMesh.certs + "/\(name).key"]
                )
                #expect(refused.status == 0, "\(name) certificate got \(refused.status)")
            }
            #expect(orders.requestCount == before, "a refused peer reached the app")
            let serverMetrics = try await Curl.get("http://127.0.0.1:\(server.port("admin") ?? 0)/metrics").text
            let failedHandshakes = serverMetrics.split(separator: "\n").first {
                $0.hasPrefix("meshwork_listener_mesh_errors_total{") && $0.contains("listener=\"inbound\"")
                    && $0.contains("reason=\"tls_handshake_failed\"")
            }
            #expect(
                failedHandshakes.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0 >= 4,
                "\(serverMetrics)"
            )

            // An impostor: a payments sidecar (with a real mesh certificate, for payments)
            // registered as an orders instance. The client refuses its certificate.
            let impostor = try await startServer("payments", app: payments, controller: controller)
            sidecars.append(impostor)
            await server.stop()
            sidecars.removeFirst()
            let fake =
                #"{"service": "orders", "address": "127.0.0.1", "port": \#(impostor.port("inbound") ?? 0), "ttlSeconds": 0}"#
            let put = try await controller.call("PUT", "/v1/instances/orders-impostor", body: fake)
            #expect(put.status == 200, "\(put.text)")
            #expect(try await client.waitForLog("endpoints=1 "))
            let paymentsBefore = payments.requestCount
            var statuses: [Int] = []
            for _ in 0..<5 {
                let result = try await Curl.get(url)
                statuses.append(result.status)
                // The refused peer certificate: documented as upstream_reset.
                #expect(result.header("x-meshwork-error") == "upstream_reset", "\(result.status)")
            }
            #expect(statuses.allSatisfy { $0 >= 500 }, "\(statuses)")
            #expect(payments.requestCount == paymentsBefore, "the impostor got calls")
            #expect(client.log.contains("peer presented the wrong identity"), "\(client.log)")
            #expect(client.log.contains("expected=spiffe://mesh.local/service/orders"))
            let clientMetrics = try await Curl.get("http://127.0.0.1:\(client.port("admin") ?? 0)/metrics").text
            let mismatches = clientMetrics.split(separator: "\n").first {
                $0.hasPrefix("meshwork_cluster_errors_total{") && $0.contains("cluster=\"orders\"")
                    && $0.contains("reason=\"peer_identity_mismatch\"")
            }
            #expect(mismatches.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0 >= 1, "\(clientMetrics)")
        } catch {
            await stopAll(controller, [orders, payments], sidecars)
            throw error
        }
        await stopAll(controller, [orders, payments], sidecars)
    }

    @Test func certificatesRenewUnderLoadWithoutAFailedRequest() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        do {
            // Three-second certificates: renewed every two seconds on both sides.
            let server = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: ["--cert-ttl", "3s"]
            )
            sidecars.append(server)
            let client = try await startClient(controller: controller, extra: ["--cert-ttl", "3s"])
            sidecars.append(client)
            let url = "http://127.0.0.1:\(client.port("upstream:orders") ?? 0)/"
            #expect(try await until200(url))
            // Continuous requests for 5 s (bounded: 2000), each on a new client connection.
            var failures: [Int] = []
            var sent = 0
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline, sent < 2000 {
                let result = try await Curl.run([url + "?n=[1-20]"], timeout: 10)
                let codes = result.statusLines.compactMap { Int($0.split(separator: " ")[1]) }
                sent += codes.count
                failures += codes.filter { $0 != 200 }
            }
            #expect(sent >= 20)
            #expect(failures.isEmpty, "\(failures.count) failed of \(sent): \(failures.prefix(5))")
            #expect(server.log.contains("workload certificate renewed"), "\(server.log)")
            #expect(client.log.contains("workload certificate renewed"), "\(client.log)")
            #expect(try await controller.metric(#"meshwork_controller_certificates_issued_total{via="renewal"}"#) >= 2)
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }

    @Test func aReusedJoinTokenStopsTheSidecarWithAClearError() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        let tokenFile = try await controller.joinTokenFile("orders")
        var first: SidecarProcess?
        do {
            first = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", tokenFile,
                ],
                waitFor: ["inbound"]
            )
            #expect(try await first?.waitForLog("workload certificate issued") == true)
            let second = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", tokenFile,
                ],
                waitFor: ["inbound"]
            )
            for _ in 0..<500 where second.process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
            #expect(!second.process.isRunning)
            #expect(second.process.isRunning || second.process.terminationStatus != 0)
            #expect(second.log.contains("no uses left"), "\(second.log)")
            await second.stop()
            // The first sidecar is unaffected.
            #expect(first?.process.isRunning == true)
        } catch {
            await first?.stop()
            await orders.stop()
            await controller.stop()
            controller.remove()
            throw error
        }
        await first?.stop()
        await orders.stop()
        await controller.stop()
        controller.remove()
    }

    /// GETs `url` until it answers `status` (bounded: 100 tries, 10 s); the last status.
    private func until(_ url: String, answers status: Int) async throws -> Int {
        var last = 0
        let deadline = ContinuousClock.now + .seconds(10)
        for _ in 0..<100 where ContinuousClock.now < deadline {
            last = try await Curl.get(url).status
            if last == status { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        return last
    }

    @Test func authorizationPoliciesDecideWhoMayCallAndRefusalsNeverReachTheApp() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        let policyFile = controller.dataDirectory + "-policy.yaml"
        defer { try? FileManager.default.removeItem(atPath: policyFile) }
        do {
            let server = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(server)
            let web = try await startClient("web", controller: controller)
            sidecars.append(web)
            let batch = try await startClient("batch", controller: controller)
            sidecars.append(batch)
            let webURL = "http://127.0.0.1:\(web.port("upstream:orders") ?? 0)"
            let batchURL = "http://127.0.0.1:\(batch.port("upstream:orders") ?? 0)"
            #expect(try await until200(webURL + "/"))
            #expect(try await until200(batchURL + "/"))

            // Only web may call orders; applied with ctl, as an operator would.
            try """
            kind: AuthorizationPolicy
            name: orders-from-web
            target: orders
            from: ["spiffe://mesh.local/service/web"]
            ---
            kind: AuthorizationPolicy
            name: orders-no-admin
            target: orders
            action: deny
            paths: [/admin]
            """.write(toFile: policyFile, atomically: true, encoding: .utf8)
            let applied = try await Command.run([
                CLITests.binary, "ctl", "apply", "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token", "-f", policyFile,
            ])
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await until(batchURL + "/", answers: 403) == 403)
            let before = orders.requestCount
            let refused = try await Curl.get(batchURL + "/orders")
            #expect(refused.status == 403)
            #expect(refused.header("x-meshwork-error") == "unauthorized")
            #expect(try await Curl.get(webURL + "/orders").status == 200)
            #expect(try await Curl.get(webURL + "/admin/users").status == 403, "the deny rule did not win")
            #expect(orders.requestCount == before + 1, "a refused call reached the app")

            // Counted per source and target on the orders sidecar.
            let metrics = try await Curl.get("http://127.0.0.1:\(server.port("admin") ?? 0)/metrics").text
            #expect(
                metrics.contains(
                    #"meshwork_inbound_authz_denied_total{source="spiffe://mesh.local/service/batch",target="orders"}"#
                ),
                "\(metrics)"
            )
            let listed = try await Command.run([CLITests.binary, "ctl", "policies", "--controller", controller.url])
            #expect(listed.output.contains("orders-from-web") && listed.output.contains("mesh default: allow"))

            // Mesh default deny, and the allow policy gone: nobody gets in.
            let mesh = try await controller.call("PUT", "/v1/mesh", body: #"{"defaultAuthorization": "deny"}"#)
            #expect(mesh.status == 200, "\(mesh.text)")
            #expect(try await controller.call("DELETE", "/v1/policies/orders-from-web").status == 200)
            #expect(try await until(webURL + "/", answers: 403) == 403)
            // A bad policy is refused with its field path, and changes nothing.
            let bad = try await controller.call(
                "PUT",
                "/v1/policies/broken",
                body: #"{"target": "orders", "from": ["web"]}"#
            )
            #expect(bad.status == 400)
            #expect(bad.text.contains("from[0]"))
            #expect(try await Curl.get(webURL + "/").status == 403)
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }

    /// Stops what a test started (also when it failed): sidecars, apps, the controller.
    private func stopAll(_ controller: ControllerProcess, _ apps: [DemoApp], _ sidecars: [SidecarProcess]) async {
        for sidecar in sidecars { await sidecar.stop() }
        for app in apps { await app.stop() }
        await controller.stop()
        controller.remove()
    }

    /// Waits (bounded: 10 s) until `text` appears `count` times in the sidecar's log.
    private func waitFor(_ sidecar: SidecarProcess, _ text: String, count: Int) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if sidecar.log.components(separatedBy: text).count - 1 >= count { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    @Test func caRotationUnderLoadLosesNoRequest() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        do {
            let server = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(server)
            let web = try await startClient("web", controller: controller)
            sidecars.append(web)
            let url = "http://127.0.0.1:\(web.port("upstream:orders") ?? 0)/"
            #expect(try await until200(url))
            let before = json(try await controller.call("GET", "/v1/ca", authorized: false))
            let oldRoot = (before["active"] as? [String: Any])?["fingerprint"] as? String

            // Continuous load while the three steps run (bounded: 3000 requests, 12 s).
            let done = ManagedFlag()
            let answered = ManagedCount()
            let load = Task {
                var sent = 0
                var failures: [Int] = []
                let deadline = ContinuousClock.now + .seconds(12)
                while !done.isSet, ContinuousClock.now < deadline, sent < 3000 {
                    let result = try await Curl.run([url + "?n=[1-10]"], timeout: 10)
                    let codes = result.statusLines.compactMap { Int($0.split(separator: " ")[1]) }
                    sent += codes.count
                    answered.add(codes.count)
                    failures += codes.filter { $0 != 200 } + Array(repeating: 0, count: max(0, 10 - codes.count))
                }
                return (sent, failures)
            }
            do {
                #expect(try await answered.waitFor(atLeast: answered.value + 30), "the load stalled")
                let prepared = try await controller.call("POST", "/v1/ca/rotate", body: #"{"step": "prepare"}"#)
                #expect(prepared.status == 200, "\(prepared.text)")
                #expect(try await waitFor(server, "trust bundle updated", count: 1), "\(server.log)")
                #expect(try await waitFor(web, "trust bundle updated", count: 1))
                #expect(try await answered.waitFor(atLeast: answered.value + 30), "the load stalled")
                let activated = try await controller.call("POST", "/v1/ca/rotate", body: #"{"step": "activate"}"#)
                #expect(activated.status == 200, "\(activated.text)")
                #expect(try await waitFor(server, "workload certificate renewed", count: 1), "\(server.log)")
                #expect(try await waitFor(web, "workload certificate renewed", count: 1), "\(web.log)")
                #expect(try await answered.waitFor(atLeast: answered.value + 30), "the load stalled")
                let early = try await controller.call("POST", "/v1/ca/rotate", body: #"{"step": "finish"}"#)
                #expect(early.status == 409, "finishing before the old certificates expire needs force")
                let finished = try await controller.call(
                    "POST",
                    "/v1/ca/rotate",
                    body: #"{"step": "finish", "force": true}"#
                )
                #expect(finished.status == 200, "\(finished.text)")
                #expect(try await waitFor(server, "trust bundle updated", count: 3), "\(server.log)")
                #expect(try await waitFor(web, "trust bundle updated", count: 3))
                #expect(try await answered.waitFor(atLeast: answered.value + 50), "the load stalled")
            } catch {
                done.set()
                _ = try? await load.value
                throw error
            }
            done.set()
            let (sent, failures) = try await load.value
            #expect(sent >= 50, "only \(sent) requests during the rotation")
            #expect(failures.isEmpty, "\(failures.count) of \(sent) failed: \(failures.prefix(5))")

            // Only the new root is trusted now, and the old one is gone from the status.
            let after = json(try await controller.call("GET", "/v1/ca", authorized: false))
            let newRoot = (after["active"] as? [String: Any])?["fingerprint"] as? String
            #expect(newRoot != nil && newRoot != oldRoot)
            #expect((after["retiring"] as? [Any])?.isEmpty == true)
            let bundle = try await controller.call("GET", "/v1/trust-bundle", authorized: false).text
            #expect(bundle.components(separatedBy: "BEGIN CERTIFICATE").count == 2)
            // A sidecar that joins now trusts only the new root: orders' renewed
            // certificate is what it gets.
            let late = try await startClient("web", controller: controller)
            sidecars.append(late)
            #expect(try await until200("http://127.0.0.1:\(late.port("upstream:orders") ?? 0)/"), "\(late.log)")
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }

    @Test func operatorTokensHaveScopesAndProtectedReadsNeedAToken() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start(dataDirectory: nil, ["--protect-reads"])
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        let readFile = controller.dataDirectory + "-read.token"
        defer { try? FileManager.default.removeItem(atPath: readFile) }
        do {
            #expect(try await controller.call("GET", "/v1/services", authorized: false).status == 401)
            #expect(try await controller.call("GET", "/v1/trust-bundle", authorized: false).status == 200)
            #expect(try await controller.call("GET", "/v1/openapi.json", authorized: false).status == 200)

            let created = try await controller.call(
                "POST",
                "/v1/tokens",
                body: #"{"kind": "operator", "scope": "read"}"#
            )
            #expect(created.status == 200, "\(created.text)")
            let read = try #require(json(created)["token"] as? String)
            #expect(try await controller.call("GET", "/v1/services", bearer: read).status == 200)
            let write = try await controller.call(
                "PUT",
                "/v1/services/orders",
                body: #"{"name": "orders"}"#,
                bearer: read
            )
            #expect(write.status == 403)
            #expect(write.text.contains("read scope"), "\(write.text)")
            let mint = try await controller.call("POST", "/v1/tokens", body: #"{"service": "orders"}"#, bearer: read)
            #expect(mint.status == 403)
            let badScope = try await controller.call(
                "POST",
                "/v1/tokens",
                body: #"{"kind": "operator", "scope": "admin"}"#
            )
            #expect(badScope.status == 400 && badScope.text.contains("scope"), "\(badScope.text)")

            let writer = try await controller.call(
                "POST",
                "/v1/tokens",
                body: #"{"kind": "operator", "scope": "write"}"#
            )
            let writeToken = try #require(json(writer)["token"] as? String)
            let put = try await controller.call(
                "PUT",
                "/v1/services/orders",
                body: #"{"name": "orders"}"#,
                bearer: writeToken
            )
            #expect(put.status == 200, "\(put.text)")

            // ctl with the read token: lists, but cannot change anything.
            try (read + "\n").write(toFile: readFile, atomically: true, encoding: .utf8)
            let listed = try await Command.run([
                CLITests.binary, "ctl", "services", "--controller", controller.url, "--token-file", readFile,
            ])
            #expect(listed.exitCode == 0 && listed.output.contains("orders"), "\(listed.output)")
            let refused = try await Command.run([
                CLITests.binary, "ctl", "delete", "service", "orders", "--controller", controller.url,
                "--token-file", readFile,
            ])
            #expect(refused.exitCode == 1 && refused.output.contains("read scope"), "\(refused.output)")
            let tokens = try await Command.run([
                CLITests.binary, "ctl", "token", "list", "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token",
            ])
            #expect(tokens.output.components(separatedBy: "operator").count - 1 == 2, "\(tokens.output)")

            // Sidecars read with their own credentials: discovery works with reads protected.
            let server = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(server)
            let client = try await startClient("web", controller: controller)
            sidecars.append(client)
            #expect(try await until200("http://127.0.0.1:\(client.port("upstream:orders") ?? 0)/"), "\(client.log)")
            #expect(try await controller.metric(#"meshwork_controller_api_refusals_total{reason="forbidden"}"#) == 3)
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }

    @Test func theAPIOverTLSIsVerifiedByCurlCtlAndSidecarsAcrossACARotation() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start(dataDirectory: nil, ["--tls"])
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        do {
            #expect(try await controller.call("GET", "/v1/services").status == 200)
            let unverified = try await Curl.run([controller.url + "/v1/services"])
            #expect(unverified.status == 0 && unverified.exitCode != 0, "a client without the CA got through")
            let plaintext = try await Curl.get("http://127.0.0.1:\(controller.port)/v1/services")
            #expect(plaintext.status != 200)
            let handshake = try await Command.run([
                "openssl", "s_client", "-connect", "127.0.0.1:\(controller.port)", "-CAfile", controller.caFile,
                "-verify_return_error", "-brief",
            ])
            #expect(handshake.output.contains("Verification: OK"), "\(handshake.output)")
            let ctl = try await Command.run([
                CLITests.binary, "ctl", "services", "--controller", controller.url, "--ca-file", controller.caFile,
            ])
            #expect(ctl.exitCode == 0, "\(ctl.output)")

            let extra = ["--controller-ca", controller.caFile]
            let server = try await startServer("orders", app: orders, controller: controller, extra: extra)
            sidecars.append(server)
            let client = try await startClient("web", controller: controller, extra: extra)
            sidecars.append(client)
            #expect(try await until200("http://127.0.0.1:\(client.port("upstream:orders") ?? 0)/"), "\(client.log)")

            // A CA rotation: the API's certificate follows it, and so do its clients. Each step
            // waits for both sidecars to take it (a bundle update each; new leaves on activate).
            let steps = [
                (#"{"step": "prepare"}"#, "trust bundle updated", 1),
                (#"{"step": "activate"}"#, "workload certificate renewed", 1),
                (#"{"step": "finish", "force": true}"#, "trust bundle updated", 3),
            ]
            for (step, line, count) in steps {
                let result = try await controller.call("POST", "/v1/ca/rotate", body: step)
                #expect(result.status == 200, "\(step): \(result.text)")
                #expect(try await waitFor(server, line, count: count), "\(step): \(server.log)")
                #expect(try await waitFor(client, line, count: count), "\(step): \(client.log)")
            }
            #expect(try await controller.call("GET", "/v1/services").status == 200, "ca.pem was not rewritten")
            // The orders sidecar renews its lease through the new chain: two heartbeats after
            // the rotation (one every second on its 3 s lease), none for an unknown instance.
            let renewed = #"meshwork_controller_heartbeats_total{result="renewed"}"#
            let before = try await controller.metric(renewed)
            let heartbeatDeadline = ContinuousClock.now + .seconds(10)
            while try await controller.metric(renewed) < before + 2, ContinuousClock.now < heartbeatDeadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(
                try await controller.metric(renewed) >= before + 2,
                "no heartbeat after the rotation: \(server.log)"
            )
            #expect(
                try await controller.metric(#"meshwork_controller_heartbeats_total{result="unknown_instance"}"#) == 0
            )
            let listed = try await controller.call("GET", "/v1/instances?service=orders")
            #expect(listed.text.contains("\"orders\""), "the orders instance was lost: \(server.log)")
            #expect(try await until200("http://127.0.0.1:\(client.port("upstream:orders") ?? 0)/"))
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }

    @Test func tcpInboundAdmitsOrRefusesConnectionsByIdentity() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        let directory = controller.dataDirectory + "-tcp"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var sidecars: [SidecarProcess] = []
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let server = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: ["--app-protocol", "tcp"]
            )
            sidecars.append(server)
            // Client certificates for web and batch, from the controller, as a peer sidecar has.
            var files: [String: (cert: String, key: String)] = [:]
            for name in ["web", "batch"] {
                let csr = try await opensslCSR(in: directory, name: name)
                let issued = try await controller.call(
                    "POST",
                    "/v1/certificates",
                    body: try certificateRequest(["csr": csr, "token": try await controller.joinToken(name)]),
                    authorized: false
                )
                let certificate = directory + "/\(name).pem"
                try (json(issued)["certificate"] as? String ?? "").write(
                    toFile: certificate,
                    atomically: true,
                    encoding: .utf8
                )
                files[name] = (certificate, directory + "/\(name).key")
            }
            let url = "https://127.0.0.1:\(server.port("inbound") ?? 0)/"
            func call(_ name: String) async throws -> CurlResult {
                try await Curl.get(url, ["-k", "--cert", files[name]!.cert, "--key", files[name]!.key])
            }
            #expect(try await call("batch").status == 200, "before any policy, the mesh default allows")

            let policy = #"{"target": "orders", "from": ["spiffe://mesh.local/service/web"]}"#
            #expect(try await controller.call("PUT", "/v1/policies/orders-tcp", body: policy).status == 200)
            #expect(try await server.waitForLog("policies=1"), "\(server.log)")
            let before = orders.requestCount
            let connectionsBefore = orders.connectionCount
            let refused = try await call("batch")
            #expect(refused.status == 0, "batch got \(refused.status) through a TCP inbound that refuses it")
            #expect(orders.requestCount == before, "a refused connection reached the app")
            // The app is not even connected to for a caller refused in its handshake.
            #expect(orders.connectionCount == connectionsBefore, "a refused caller made the sidecar connect to the app")
            #expect(try await call("web").status == 200)
            let metrics = try await Curl.get("http://127.0.0.1:\(server.port("admin") ?? 0)/metrics").text
            #expect(
                metrics.contains(
                    #"meshwork_inbound_authz_denied_total{source="spiffe://mesh.local/service/batch",target="orders"} 1"#
                ),
                "\(metrics)"
            )
        } catch {
            await stopAll(controller, [orders], sidecars)
            throw error
        }
        await stopAll(controller, [orders], sidecars)
    }
}

/// A count one task adds to and another waits on.
final class ManagedCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add(_ amount: Int) { lock.withLock { count += amount } }

    /// Waits (bounded: 10 s) until the count reaches `target`.
    func waitFor(atLeast target: Int) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while value < target, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        return value >= target
    }
}

/// A flag set by one task and read by another.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

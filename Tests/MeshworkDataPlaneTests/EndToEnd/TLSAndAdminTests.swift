import Foundation
import Logging
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import NIOCore
import Prometheus
import Testing

/// The inbound listener's mTLS refuses anything not from the mesh CA; the admin listener;
/// graceful drain; config errors at start.
@Suite("mTLS, admin and lifecycle", .serialized)
struct TLSAndAdminTests {
    /// A peer sidecar presenting a CA certificate (which chains to the mesh root: it is
    /// the root) is refused as a workload, by the caller too: X.509-SVID leaves are
    /// CA:FALSE with digitalSignature and without keyCertSign or cRLSign.
    @Test func outboundRefusesAPeerPresentingACACertificate() async throws {
        try await TestMesh.withPair(serverTLS: "mesh-ca") { server, client in
            let result = try await Curl.get(client.url("upstream:orders", "/"))
            #expect(result.status == 502, "\(result.status) \(result.text)")
            #expect(server.app.requestCount == 0)
        }
    }

    /// A peer that connects to the mTLS inbound listener and never finishes its handshake
    /// (sends nothing, or drips its ClientHello a byte at a time) is cut off at
    /// `timeouts.tlsHandshake`, and counted; a good peer is still served.
    @Test(arguments: [[], ["\u{16}", "\u{03}", "\u{01}", "\u{00}"]])
    func aStalledTLSHandshakeIsCutAtItsDeadline(chunks: [String]) async throws {
        let server = try await TestMesh.startServerSide { config in
            config.timeouts.tlsHandshake = .milliseconds(300)
        }
        let start = ContinuousClock.now
        _ = try await RawClient.exchange(
            port: server.sidecar.port("inbound"),
            send: chunks,
            pauseBetween: .milliseconds(50),
            timeout: .seconds(5)
        )
        let elapsed = ContinuousClock.now - start
        #expect(elapsed < .seconds(2), "the stalled handshake stayed open \(elapsed)")
        let counted = server.sidecar.metric(
            #"meshwork_listener_mesh_errors_total{listener="inbound",kind="inbound",reason="tls_handshake_failed"}"#
        )
        #expect((counted ?? 0) >= 1, "\(server.sidecar.metricsText)")
        let good = try await Curl.run([
            "-k", "--cert", TestMesh.cert("web"), "--key", TestMesh.key("web"),
            "https://127.0.0.1:\(server.sidecar.port("inbound"))/",
        ])
        #expect(good.status == 200, "\(good.stderr)")
        await server.sidecar.stop()
        await server.app.stop()
    }

    @Test(arguments: [
        ("rogue", "a certificate from another CA"),
        ("expired", "an expired certificate"),
        ("", "no client certificate"),
        ("mesh-ca", "the mesh CA's own certificate (CA:TRUE, keyCertSign) as a workload's"),
    ])
    func inboundRefusesBadClientCertificates(name: String, why: String) async throws {
        try await TestMesh.withServerSide { server in
            var arguments = ["-k", "--http2", "https://127.0.0.1:\(server.sidecar.port("inbound"))/"]
            if !name.isEmpty { arguments = ["--cert", TestMesh.cert(name), "--key", TestMesh.key(name)] + arguments }
            let result = try await Curl.run(arguments)
            #expect(result.exitCode != 0, "\(why) must be refused")
            #expect(result.status == 0)
            #expect(server.app.requestCount == 0)
            // A good client is still served.
            let good = try await Curl.run(
                [
                    "-k", "--cert", TestMesh.cert("web"), "--key", TestMesh.key("web"),
                    "https://127.0.0.1:\(server.sidecar.port("inbound"))/",
                ]
            )
            #expect(good.status == 200)
        }
    }

    @Test func inboundRefusesPlaintext() async throws {
        try await TestMesh.withServerSide { server in
            let result = try await Curl.get(server.sidecar.url("inbound"))
            #expect(result.status == 0)
            #expect(server.app.requestCount == 0)
        }
    }

    @Test func clientSidecarRefusesServerFromAnotherCA() async throws {
        // The server side's certificate and CA both come from another mesh.
        let otherMesh: (inout SidecarConfig) -> Void = { config in config.tls?.ca = TestMesh.cert("other-ca") }
        try await TestMesh.withPair(serverTLS: "rogue", configureServer: otherMesh) { server, client in
            let result = try await Curl.get(client.url("upstream:orders"))
            #expect(result.status == 502)
            // A failed handshake with a peer is documented as upstream_reset.
            #expect(result.header("x-meshwork-error") == "upstream_reset")
            #expect(server.app.requestCount == 0)
        }
    }

    @Test func adminEndpoints() async throws {
        var config = TestMesh.baseConfig("web")
        config.clusters = [TestMesh.cluster("orders", .http1, [])]
        config.upstreams = [UpstreamConfig(listen: TestMesh.any(), cluster: "orders")]
        let tokenFile = FileManager.default.temporaryDirectory.appendingPathComponent("mw-admin-\(UUID())").path
        config.adminTokenFile = tokenFile
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        try await TestMesh.withSidecar(config) { sidecar in
            _ = try await Curl.get(sidecar.url("upstream:orders"))

            let ready = try await Curl.get(sidecar.url("admin", "/ready"))
            #expect(ready.status == 200)
            #expect(try await Curl.get(sidecar.url("admin", "/live")).status == 200)
            let metrics = try await Curl.get(sidecar.url("admin", "/metrics"))
            #expect(metrics.status == 200)
            #expect(metrics.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
            #expect(
                metrics.text.contains(
                    #"meshwork_cluster_errors_total{cluster="orders",reason="no_healthy_endpoint"} 1"#
                )
            )
            #expect(metrics.text.contains("# TYPE meshwork_listener_request_duration_seconds histogram"))

            let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(
                in: .whitespacesAndNewlines
            )
            let configJSON = try await Curl.run([
                "-H", "Authorization: Bearer \(token)", sidecar.url("admin", "/config"),
            ])
            #expect(configJSON.status == 200)
            let object = try JSONSerialization.jsonObject(with: configJSON.body) as? [String: Any]
            let clusters = object?["clusters"] as? [[String: Any]]
            #expect(clusters?.first?["name"] as? String == "orders")
            #expect(clusters?.first?["requestTimeout"] as? String == "15s")

            #expect(try await Curl.get(sidecar.url("admin", "/nope")).status == 404)
            #expect(try await Curl.run(["-X", "POST", sidecar.url("admin", "/metrics")]).status == 405)
        }
    }

    @Test func drainFinishesInFlightThenStopsAccepting() async throws {
        let app = try await TestMesh.startApp("orders-1")
        let sidecar = try await TestMesh.startClientSide(cluster: TestMesh.cluster("orders", .http1, [app.address]))
        do {
            let url = sidecar.url("upstream:orders", "/delay/600")
            async let inFlight = Curl.get(url)
            // Let the request reach the app before draining.
            for _ in 0..<100 where app.requestCount == 0 {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(app.requestCount == 1)
            await sidecar.sidecar.drain()
            let finished = try await inFlight
            #expect(finished.status == 200)
            #expect(finished.text == "slept 600ms\n")
            #expect(sidecar.sidecar.isReady == false)
            // A drained sidecar accepts no new connection. (The freed port may already belong
            // to another test's server, so the proof is the listener's own count.)
            let accepted = sidecar.metric(
                #"meshwork_listener_connections_total{listener="upstream:orders",kind="upstream"}"#
            )
            _ = try await Curl.get(sidecar.url("upstream:orders", "/"))
            #expect(
                sidecar.metric(#"meshwork_listener_connections_total{listener="upstream:orders",kind="upstream"}"#)
                    == accepted
            )
        } catch {
            await app.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await app.stop()
    }

    @Test func badTLSFilesAreRefusedWithTheField() async throws {
        var config = TestMesh.baseConfig("web")
        config.tls = TLSFiles(ca: TestMesh.cert("mesh-ca"), cert: "/nonexistent/web.pem", key: TestMesh.key("web"))
        #expect {
            _ = try Sidecar(config: config, group: TestMesh.group, registry: .init(), logger: .init(label: "t"))
        } throws: { error in
            (error as? ConfigErrors)?.errors.first?.path == "tls.cert"
        }
    }

    @Test func portInUseNamesTheListener() async throws {
        let first = try await TestMesh.startSidecar(TestMesh.baseConfig("a"))
        do {
            var config = TestMesh.baseConfig("b")
            config.admin = HostPort(host: "127.0.0.1", port: first.port("admin"))
            let sidecar = try Sidecar(
                config: config,
                group: TestMesh.group,
                registry: .init(),
                logger: .init(label: "t")
            )
            await #expect {
                try await sidecar.start()
            } throws: { error in
                (error as? ListenerBindError)?.listener == "admin"
            }
        } catch {
            await first.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await first.stop()
    }
}

import Foundation
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import NIOCore
import Testing

/// Two sidecars: HTTP/1.1 from the app travels as HTTP/2 over mTLS between them and is
/// restored for the far app.
@Suite("Sidecar pair over mTLS", .serialized)
struct MeshPairTests {
    @Test func http1TravelsAsHTTP2AndIsRestored() async throws {
        try await TestMesh.withPair { server, client in

            let result = try await Curl.get(client.url("upstream:orders", "/headers"))
            #expect(result.status == 200)
            #expect(result.header("x-served-by") == "orders-1")
            #expect(result.text.hasPrefix("GET /headers HTTP/1.1"))
            #expect(!result.text.contains("x-meshwork-proto"))

            // An HTTP/1.0 caller reaches the far app as HTTP/1.0.
            let old = try await Curl.get(client.url("upstream:orders", "/headers"), ["-0"])
            #expect(old.text.hasPrefix("GET /headers HTTP/1.0"))

            // The server side saw these on its inbound listener, over HTTP/2 (one pooled
            // connection per client event loop at most).
            #expect(
                server.sidecar.metric(
                    #"meshwork_listener_requests_total{listener="inbound",kind="inbound",class="2xx"}"#
                )
                    == 2
            )
            let connections = try #require(
                server.sidecar.metric(#"meshwork_listener_connections_total{listener="inbound",kind="inbound"}"#)
            )
            #expect(connections >= 1 && connections <= 2)
        }
    }

    @Test func manyRequestsMultiplexOverFewConnections() async throws {
        try await TestMesh.withPair { server, client in
            let url = client.url("upstream:orders", "/delay/50")
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await Curl.get(url).status }
                }
                for try await status in group { #expect(status == 200) }
            }
            #expect(server.app.requestCount == 20)
            let connections = try #require(
                client.metric(#"meshwork_cluster_connections_total{cluster="orders"}"#)
            )
            #expect(connections <= 2, "20 concurrent requests should share the pooled HTTP/2 connections")
        }
    }

    @Test func streamingAndTrailersAcrossTheMesh() async throws {
        try await TestMesh.withPair { server, client in

            let payload = Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 * 31) })
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("mw-mesh-\(UUID().uuidString)")
            try payload.write(to: file)
            defer { try? FileManager.default.removeItem(at: file) }
            let echo = try await Curl.run(
                [
                    "-H", "Transfer-Encoding: chunked", "--data-binary", "@\(file.path)",
                    client.url("upstream:orders", "/echo"),
                ]
            )
            #expect(echo.status == 200)
            // Compared as one Bool: on a mismatch Swift Testing would diff megabytes byte by byte.
            let echoed = echo.body == payload
            #expect(echoed, "echo differs: \(echo.body.count) bytes back of \(payload.count)")

            let trailers = try await Curl.get(client.url("upstream:orders", "/trailers"), ["--raw"])
            #expect(trailers.status == 200)
            #expect(trailers.text.contains("x-checksum: abc123"))
        }
    }

    @Test func grpcStyleH2cAppBehindTheMesh() async throws {
        try await TestMesh.withPair(appProtocol: .h2c) { server, client in
            let result = try await Curl.get(client.url("upstream:orders", "/trailers"), ["--http2-prior-knowledge"])
            #expect(result.status == 200)
            #expect(result.header("x-checksum") == "abc123")
            let echo = try await Curl.run(
                ["--http2-prior-knowledge", "--data-binary", "ping", client.url("upstream:orders", "/echo")]
            )
            #expect(echo.text == "ping")
        }
    }

    @Test func opaqueTCPOverMTLS() async throws {
        try await TestMesh.withPair(appProtocol: .tcp, listenerProtocol: .tcp) { server, client in
            // HTTP is just bytes here: the Host header curl sends arrives untouched.
            let result = try await Curl.get(client.url("upstream:orders", "/headers"))
            #expect(result.status == 200)
            #expect(result.text.contains("host: 127.0.0.1:\(client.port("upstream:orders"))"))
            let big = try await Curl.get(client.url("upstream:orders", "/bytes/\(2 << 20)"))
            #expect(big.body.count == 2 << 20)
        }
    }

    @Test func plainTCPUpstream() async throws {
        try await TestMesh.withAppBehindSidecar(listenerProtocol: .tcp) { app, sidecar in
            let result = try await Curl.get(sidecar.url("upstream:orders", "/"))
            #expect(result.text == "hello from orders-1\n")
        }
    }

    @Test func directHTTP2ClientWithMeshCertificate() async throws {
        try await TestMesh.withServerSide { server in
            let url = "https://127.0.0.1:\(server.sidecar.port("inbound"))/headers"
            let tls = [
                "--cacert", TestMesh.cert("mesh-ca"), "--cert", TestMesh.cert("web"), "--key", TestMesh.key("web"),
                "-k",
            ]
            let h2 = try await Curl.get(url, tls + ["--http2"])
            #expect(h2.status == 200)
            #expect(h2.statusLines.first?.hasPrefix("HTTP/2") == true)
            let h1 = try await Curl.get(url, tls + ["--http1.1"])
            #expect(h1.status == 200)
            #expect(h1.statusLines.first?.hasPrefix("HTTP/1.1") == true)
        }
    }
}

extension MeshPairTests {
    /// Hundreds of streams on one pooled connection: finished streams must close cleanly
    /// (no RST_STREAM), or the peer's abuse protection closes the connection mid-flight.
    @Test func hundredsOfSequentialRequestsShareOneConnectionWithoutResets() async throws {
        try await TestMesh.withPair { server, client in
            let result = try await Curl.run([client.url("upstream:orders", "/[1-400]")], timeout: 60)
            #expect(result.exitCode == 0)
            #expect(client.metric(#"meshwork_cluster_errors_total{cluster="orders",reason="upstream_reset"}"#) == 0)
            #expect(client.metric(#"meshwork_cluster_requests_total{cluster="orders",class="2xx"}"#) == 400)
            #expect(client.metric(#"meshwork_cluster_connections_total{cluster="orders"}"#) == 1)
            #expect(
                server.sidecar.metric(#"meshwork_listener_connections_total{listener="inbound",kind="inbound"}"#) == 1
            )
        }
    }
}

extension MeshPairTests {
    /// WebSocket-style upgrades cross the mesh on a TLS connection of their own (HTTP/2
    /// cannot carry Upgrade), then bytes flow both ways.
    @Test func upgradeTunnelsAcrossTheMesh() async throws {
        try await TestMesh.withPair { server, client in
            let answer = try await RawClient.exchange(
                port: client.port("upstream:orders"),
                send: [ListenerTests.upgradeRequest, "over-", "the-mesh"],
                pauseBetween: .milliseconds(150),
                timeout: .seconds(1)
            )
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), "\(answer)")
            #expect(answer.hasSuffix("\r\n\r\nover-the-mesh"), "\(answer)")
            #expect(
                server.sidecar.metric(
                    #"meshwork_listener_requests_total{listener="inbound",kind="inbound",class="1xx"}"#
                )
                    == 1
            )
        }
    }
}

extension MeshPairTests {
    /// Many callers hanging up mid-request at once (a load generator stopping, a deploy):
    /// the peer's late answers for those reset streams must not break the shared
    /// connection for everyone else.
    @Test func massHangUpDoesNotBreakTheSharedConnection() async throws {
        try await TestMesh.withPair { server, client in
            // Warm the pooled connection.
            #expect(try await Curl.get(client.url("upstream:orders")).status == 200)
            let port = client.port("upstream:orders")
            try await withThrowingTaskGroup(of: String.self) { group in
                // Callers that hang up right after asking: their resets cross the far side's
                // answers on the wire, which then arrive for streams already reset.
                for index in 0..<300 {
                    group.addTask {
                        try await RawClient.exchange(
                            port: port,
                            send: ["GET /bytes/\(index * 200) HTTP/1.1\r\nHost: orders\r\n\r\n"],
                            timeout: .milliseconds(Int64(1 + index % 5))
                        )
                    }
                }
                for try await _ in group {}
            }
            // Let the far side's answers for the abandoned streams arrive. A grace period, not
            // a condition: no counter sees an exchange its caller abandoned (the follow-up in
            // the note of issue 17), so there is nothing to wait on yet.
            try await Task.sleep(for: .milliseconds(600))
            for _ in 0..<10 {
                let after = try await Curl.run([client.url("upstream:orders")], timeout: 5)
                #expect(after.status == 200, "the shared connection must keep serving (\(after.stderr))")
            }
        }
    }
}

extension MeshPairTests {
    /// gRPC-style bidirectional streaming (Python's h2 as the client): every message's echo
    /// must come back before the next message is sent, through both sidecars, so neither
    /// proxy may buffer a body until its end.
    @Test func bidirectionalStreamingAcrossTheMesh() async throws {
        try await TestMesh.withPair(appProtocol: .h2c) { server, client in
            let result = try await Command.run(
                ["python3", "\(TestMesh.clients)/h2_bidi.py", String(client.port("upstream:orders")), "/echo", "50"]
            )
            #expect(result.exitCode == 0, "\(result.output)")
            #expect(result.output.contains("ok 50"))
        }
    }
}

extension MeshPairTests {
    @Test(arguments: [EndpointProtocol.mesh, .http1])
    func idlePooledConnectionsAreClosed(protocol: EndpointProtocol) async throws {
        let server = try await TestMesh.startServerSide()
        var cluster = TestMesh.cluster(
            "orders",
            `protocol`,
            [`protocol` == .mesh ? server.sidecar.addresses["inbound"] : server.app.address]
        )
        cluster.idleTimeout = .milliseconds(200)
        let client = try await TestMesh.startClientSide(cluster: cluster)
        do {
            #expect(try await Curl.get(client.url("upstream:orders")).status == 200)
            #expect(client.metric(#"meshwork_cluster_connections_active{cluster="orders"}"#) == 1)
            // Bounded (5 s): until the idle timer has closed it.
            var active = client.metric(#"meshwork_cluster_connections_active{cluster="orders"}"#)
            for _ in 0..<100 where active != 0 {
                try await Task.sleep(for: .milliseconds(50))
                active = client.metric(#"meshwork_cluster_connections_active{cluster="orders"}"#)
            }
            #expect(active == 0)
            // And the next request simply opens a new one.
            #expect(try await Curl.get(client.url("upstream:orders")).status == 200)
        } catch {
            Issue.record("\(error)")
        }
        // Awaited: the next test starts with nothing of this one left.
        await client.stop()
        await server.sidecar.stop()
        await server.app.stop()
    }
}

extension MeshPairTests {
    /// Draining the server side: the request in flight on the pooled HTTP/2 connection
    /// finishes, the connection gets GOAWAY and closes, and the client side's next request
    /// gets a clear 502 instead of hanging.
    @Test func drainingServerSideFinishesStreamsThenCloses() async throws {
        let (server, client) = try await TestMesh.startPair()
        do {
            async let inFlight = Curl.get(client.url("upstream:orders", "/delay/500"))
            for _ in 0..<100 where server.app.requestCount == 0 {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(server.app.requestCount == 1)
            await server.sidecar.sidecar.drain()
            let finished = try await inFlight
            #expect(finished.status == 200)
            #expect(finished.text == "slept 500ms\n")
            #expect(
                server.sidecar.metric(#"meshwork_listener_connections_active{listener="inbound",kind="inbound"}"#) == 0
            )
            let after = try await Curl.get(client.url("upstream:orders"))
            #expect(after.status == 502)
            // Nothing listens there any more (the suites run one at a time: no other test's
            // server can have taken the freed port).
            #expect(after.header("x-meshwork-error") == "connect_failed")
        } catch {
            await client.stop()
            await server.app.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await client.stop()
        await server.app.stop()
    }
}

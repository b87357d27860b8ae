import Foundation
import MeshworkDemo
import MeshworkModel
import NIOCore
import NIOPosix
import Testing

/// Errors the proxy makes itself: the right status, `x-meshwork-error`, a metric, and the
/// app never sees a bad request.
@Suite("Mesh errors", .serialized)
struct MeshErrorTests {
    @Test func noEndpointIs503() async throws {
        let sidecar = try await TestMesh.startClientSide(cluster: TestMesh.cluster("orders", .http1, []))
        do {
            let result = try await Curl.get(sidecar.url("upstream:orders"))
            #expect(result.status == 503)
            #expect(result.header("x-meshwork-error") == "no_healthy_endpoint")
            #expect(
                sidecar.metric(#"meshwork_cluster_errors_total{cluster="orders",reason="no_healthy_endpoint"}"#) == 1
            )
        } catch {
            await sidecar.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await sidecar.stop()
    }

    @Test(arguments: [EndpointProtocol.http1, .mesh])
    func connectRefusedIs502(protocol: EndpointProtocol) async throws {
        let port = TestMesh.refusingPort
        var cluster = ClusterConfig(name: "orders")
        cluster.protocol = `protocol`
        cluster.endpoints = [EndpointConfig(address: HostPort(host: "127.0.0.1", port: port))]
        let sidecar = try await TestMesh.startClientSide(cluster: cluster)
        do {
            let result = try await Curl.get(sidecar.url("upstream:orders"))
            #expect(result.status == 502)
            #expect(result.header("x-meshwork-error") == "connect_failed")
            // The first try and two retries (the default) all failed to connect.
            #expect(sidecar.metric(#"meshwork_cluster_errors_total{cluster="orders",reason="connect_failed"}"#) == 3)
            #expect(sidecar.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) == 2)
            // The sidecar keeps serving: a second call gets the same clear answer.
            #expect(try await Curl.get(sidecar.url("upstream:orders")).status == 502)
        } catch {
            await sidecar.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await sidecar.stop()
    }

    @Test func slowUpstreamIs504() async throws {
        let short: (inout SidecarConfig) -> Void = { $0.clusters[0].requestTimeout = .milliseconds(200) }
        try await TestMesh.withAppBehindSidecar(configure: short) { _, sidecar in
            let result = try await Curl.get(sidecar.url("upstream:orders", "/delay/3000"))
            #expect(result.status == 504)
            #expect(result.header("x-meshwork-error") == "upstream_timeout")
            // Fast requests still work afterwards.
            #expect(try await Curl.get(sidecar.url("upstream:orders", "/")).status == 200)
        }
    }

    @Test func slowUpstreamAcrossTheMeshIs504() async throws {
        let configureServer: (inout SidecarConfig) -> Void = { config in
            config.inbound?.requestTimeout = .milliseconds(200)
        }
        try await TestMesh.withPair(configureServer: configureServer) { server, client in
            let result = try await Curl.get(client.url("upstream:orders", "/delay/3000"))
            #expect(result.status == 504)
            #expect(result.header("x-meshwork-error") == "upstream_timeout")
        }
    }

    @Test(arguments: [
        // Both Content-Length and Transfer-Encoding: a request-smuggling shape.
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Bad chunk size.
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        // Not HTTP at all.
        "HELLO THERE\r\n\r\n",
        // Two different Content-Lengths.
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ])
    func malformedRequestIs400AndNeverReachesTheApp(request: String) async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let answer = try await RawClient.exchange(port: sidecar.port("upstream:orders"), send: [request])
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains("x-meshwork-error: bad_request"))
            #expect(app.requestCount == 0)
            #expect(
                sidecar.metric(
                    #"meshwork_listener_mesh_errors_total{listener="upstream:orders",kind="upstream",reason="bad_request"}"#
                ) == 1
            )
            // Everyone else is still served.
            #expect(try await Curl.get(sidecar.url("upstream:orders")).status == 200)
        }
    }

    @Test func oversizedHeadersAre431() async throws {
        let small: (inout SidecarConfig) -> Void = { $0.limits.maxHeaderBytes = 4096 }
        try await TestMesh.withAppBehindSidecar(configure: small) { app, sidecar in
            let big = String(repeating: "a", count: 8000)
            let result = try await Curl.get(sidecar.url("upstream:orders"), ["-H", "x-big: \(big)"])
            #expect(result.status == 431)
            #expect(result.header("x-meshwork-error") == "header_too_large")
            #expect(app.requestCount == 0)
        }
    }

    @Test func stalledClientIsCutOffWith408() async throws {
        let short: (inout SidecarConfig) -> Void = { $0.timeouts.headerRead = .milliseconds(300) }
        try await TestMesh.withAppBehindSidecar(configure: short) { app, sidecar in
            // Half a request head, then silence (slowloris).
            let answer = try await RawClient.exchange(
                port: sidecar.port("upstream:orders"),
                send: ["GET / HTTP/1.1\r\nHost: x\r\n"],
                timeout: .seconds(5)
            )
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            #expect(answer.contains("x-meshwork-error: header_timeout"))
            #expect(app.requestCount == 0)
        }
    }
}

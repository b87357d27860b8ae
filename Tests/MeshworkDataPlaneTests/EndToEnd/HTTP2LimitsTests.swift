import Foundation
import MeshworkDemo
import MeshworkModel
import Testing

/// HTTP/2 limits by trust: listeners facing apps or the public announce 100 concurrent
/// streams and close a connection that resets streams as fast as it opens them (rapid
/// reset, CVE-2023-44487) with GOAWAY; only the mTLS inbound listener between sidecars,
/// whose peers are authenticated, relaxes both. Probed with Python's h2.
@Suite("HTTP/2 limits end to end", .serialized)
struct HTTP2LimitsTests {
    struct Probe: Decodable {
        var max_concurrent_streams: Int?
        var goaway: Bool
        var closed: Bool
        var resets_sent: Int
    }

    private func probe(_ arguments: [String]) async throws -> Probe {
        let result = try await Command.run(
            ["timeout", "60", "python3", "\(TestMesh.clients)/h2_limits.py"] + arguments
        )
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        return try #require(try? JSONDecoder().decode(Probe.self, from: Data(line.utf8)), "\(result.output)")
    }

    @Test func anAppFacingListenerIsStrictAndClosesARapidResetConnection() async throws {
        try await TestMesh.withAppBehindSidecar { _, sidecar in
            let result = try await probe([String(sidecar.port("upstream:orders")), "2000"])
            #expect(result.max_concurrent_streams == 100)
            #expect(
                result.goaway || result.closed,
                "\(result.resets_sent) streams opened and reset and the connection is still open"
            )
            #expect(result.resets_sent < 2000, "\(result.resets_sent)")
            // Everyone else is still served.
            #expect(try await Curl.run(["--http2-prior-knowledge", sidecar.url("upstream:orders", "/")]).status == 200)
        }
    }

    /// A pooled HTTP/2 connection carries at most `maxRequestsPerConnection` streams (by
    /// default what its 31-bit stream IDs allow, less a margin), then is drained and
    /// replaced, so a long-lived connection never runs out of stream IDs (which would
    /// trap). With a limit of 3, ten calls take four connections and all succeed.
    @Test func aPooledConnectionIsRetiredBeforeItsStreamIDsRunOut() async throws {
        let server = try await TestMesh.startServerSide()
        var cluster = TestMesh.cluster("orders", .mesh, [server.sidecar.addresses["inbound"]])
        cluster.maxRequestsPerConnection = 3
        let client = try await TestMesh.startClientSide(cluster: cluster)
        var statuses: [Int] = []
        for _ in 0..<10 {
            statuses.append(try await Curl.get(client.url("upstream:orders", "/")).status)
        }
        #expect(statuses == Array(repeating: 200, count: 10))
        #expect(server.app.requestCount == 10)
        #expect(client.metric(#"meshwork_cluster_connections_total{cluster="orders"}"#) == 4)
        await client.stop()
        await server.sidecar.stop()
        await server.app.stop()
    }

    @Test func theMTLSInboundBetweenSidecarsIsRelaxed() async throws {
        try await TestMesh.withPair { server, _ in
            let result = try await probe([
                String(server.sidecar.port("inbound")), "2000", TestMesh.cert("mesh-ca"), TestMesh.cert("web"),
                TestMesh.key("web"),
            ])
            #expect(result.max_concurrent_streams == 1000)
            #expect(!result.goaway && !result.closed, "an authenticated peer's resets closed its connection")
            #expect(result.resets_sent == 2000)
        }
    }
}

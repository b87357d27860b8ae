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

    struct Quiet: Decodable {
        var closed_after: Double?
        var goaway: Bool
        var last_stream_id: Int?
        var pings: Int
    }

    private func quiet(_ port: Int, _ mode: String, seconds: Int) async throws -> Quiet {
        let result = try await Command.run(
            ["timeout", "60", "python3", "\(TestMesh.clients)/h2_quiet.py", String(port), mode, String(seconds)]
        )
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        return try #require(try? JSONDecoder().decode(Quiet.self, from: Data(line.utf8)), "\(result.output)")
    }

    /// An HTTP/2 connection without streams does not live forever: the first HEADERS must
    /// come within `timeouts.headerRead`, and once its streams are done it is closed after
    /// `timeouts.idle`, both with GOAWAY; a peer that goes silent with a stream open is
    /// PINGed every `timeouts.keepAlive` and closed when it answers nothing
    /// (`keepalive_timeout`), while one that answers the PINGs keeps its connection.
    @Test func quietConnectionsAreClosedAndLiveOnesKept() async throws {
        let short: (inout SidecarConfig) -> Void = { config in
            config.timeouts.headerRead = .seconds(1)
            config.timeouts.idle = .seconds(1)
            config.timeouts.keepAlive = .seconds(1)
        }
        try await TestMesh.withAppBehindSidecar(configure: short) { _, sidecar in
            let port = sidecar.port("upstream:orders")
            let noHeaders = try await quiet(port, "no-headers", seconds: 6)
            #expect(noHeaders.goaway && (noHeaders.closed_after ?? 99) < 3, "\(noHeaders)")
            #expect(noHeaders.last_stream_id == 0)
            let idle = try await quiet(port, "idle", seconds: 6)
            #expect(idle.goaway && (idle.closed_after ?? 99) < 3 && idle.last_stream_id == 1, "\(idle)")
            let silent = try await quiet(port, "silent", seconds: 8)
            #expect((silent.closed_after ?? 99) < 5, "\(silent)")
            #expect(
                sidecar.metric(
                    #"meshwork_listener_mesh_errors_total{listener="upstream:orders",kind="upstream",reason="keepalive_timeout"}"#
                ) == 1
            )
            let answering = try await quiet(port, "answering", seconds: 4)
            #expect(answering.closed_after == nil && answering.pings >= 2, "\(answering)")
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

import Foundation
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import MeshworkTraffic
import Testing

/// Retries with the callers that matter most across the sidecar pair: an HTTP/2 client
/// (h2load, h2c) and a gRPC client (grpcio). Two instances of orders, one of whose
/// sidecars cannot reach its app: its answers (HTTP 503 `connect_failed`, or for gRPC a
/// Trailers-Only UNAVAILABLE) are failed tries the caller's sidecar sends to the other
/// instance, so no call fails.
@Suite("Retries across the hop", .serialized)
struct RetryAcrossTheHopTests {
    enum Caller: String, CaseIterable, CustomTestStringConvertible {
        case http2
        case grpc
        var testDescription: String { rawValue }
    }

    @Test(arguments: Caller.allCases)
    func aPeerSidecarThatCannotReachItsAppIsRetriedOnTheOtherInstance(caller: Caller) async throws {
        let grpcServer = caller == .grpc ? try await FixtureServer.start("grpc_interop.py", ["server"]) : nil
        let httpApp = caller == .http2 ? try await TestMesh.startApp("orders-1") : nil
        var stops: [() async -> Void] = []
        if let grpcServer { stops.append { await grpcServer.stop() } }
        if let httpApp { stops.append { await httpApp.stop() } }
        do {
            let appPort = grpcServer?.port("grpc") ?? httpApp?.port ?? 0
            // The healthy instance, and one whose app is gone (a refusing port).
            var servers: [RunningSidecar] = []
            for port in [appPort, TestMesh.refusingPort] {
                var config = TestMesh.baseConfig("orders")
                config.tls = TestMesh.tls("orders")
                var inbound = InboundConfig(listen: TestMesh.any(), app: HostPort(host: TestMesh.loopback, port: port))
                inbound.protocol = caller == .grpc ? .h2c : .http1
                config.inbound = inbound
                let server = try await TestMesh.startSidecar(config)
                stops.append { await server.stop() }
                servers.append(server)
            }
            var config = TestMesh.baseConfig("web")
            config.tls = TestMesh.tls("web")
            var orders = TestMesh.cluster("orders", .mesh, servers.map { $0.addresses["inbound"] })
            // Round robin: every other call tries the broken instance first.
            orders.balancer = .roundRobin
            orders.outlierDetection = nil
            config.clusters = [orders]
            config.upstreams = [UpstreamConfig(listen: TestMesh.any(), cluster: "orders")]
            let client = try await TestMesh.startSidecar(config)
            stops.append { await client.stop() }
            let port = client.port("upstream:orders")

            switch caller {
            case .http2:
                let result = try await Command.run([
                    "timeout", "60", "h2load", "-n", "40", "-c", "1", "-m", "1", "http://127.0.0.1:\(port)/",
                ])
                #expect(result.output.contains("40 succeeded, 0 failed, 0 errored"), "\(result.output)")
                #expect(result.output.contains("status codes: 40 2xx"), "\(result.output)")
            case .grpc:
                let result = try await Command.run([
                    "timeout", "60", "python3", "\(TestMesh.clients)/grpc_interop.py", "calls", String(port), "40",
                ])
                let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
                let codes = try? JSONDecoder().decode([String: Int].self, from: Data(line.utf8))
                #expect(codes == ["OK": 40], "\(result.output)")
            }
            // The broken instance was tried (and its failures retried), not skipped.
            let retried = client.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) ?? 0
            #expect(retried >= 10, "\(client.metricsText.split(separator: "\n").filter { $0.contains("retr") })")
        } catch {
            for stop in stops.reversed() { await stop() }
            throw error
        }
        for stop in stops.reversed() { await stop() }
    }
}

import Foundation
import MeshworkDataPlane
import MeshworkModel
import Testing

/// Every response shape crosses every path of the mesh, whole and promptly: status (with
/// 100 Continue and 103 Early Hints) x body framing (none, `content-length: 0`, a length,
/// chunked, trailers, trailers 50 ms after the data) x method, from an HTTP/1.1 app and an
/// h2c app, called by an HTTP/1.1 and an HTTP/2 client, each case within 1 s. Bodies the
/// HTTP rules exclude (HEAD, 204, 304) must be absent. The app and both callers are Python
/// (`shapes_app.py`, `shapes_matrix.py`): raw sockets for HTTP/1.1 so no library smooths
/// the framing over, Python's h2 for HTTP/2.
@Suite("Response shapes across the mesh", .serialized)
struct ResponseMatrixTests {
    enum Path: String, CaseIterable, CustomTestStringConvertible {
        /// Caller -> one sidecar's upstream port -> the app.
        case oneSidecar
        /// Caller -> client sidecar -> mTLS + HTTP/2 -> server sidecar -> the app.
        case meshPair
        /// Caller -> gateway -> mTLS + HTTP/2 -> server sidecar -> the app.
        case gatewayInFrontOfThePair

        var testDescription: String { rawValue }
    }

    @Test(arguments: Path.allCases)
    func everyStatusBodyAndMethodCompletesWithinASecond(path: Path) async throws {
        let app = try await FixtureServer.start("shapes_app.py")
        var stops: [() async -> Void] = [{ await app.stop() }]
        do {
            let (ports, more) = try await start(path, app: app)
            stops += more
            var targets: [MatrixTarget] = []
            for (name, port) in ports {
                targets.append(MatrixTarget(name: "\(path.rawValue) \(name) <- HTTP/1.1", port: port, caller: "h1"))
                targets.append(MatrixTarget(name: "\(path.rawValue) \(name) <- HTTP/2", port: port, caller: "h2"))
            }
            let report = try await MatrixReport.run(targets)
            #expect(report.cases == targets.count * 360)
            let failures = report.failures.prefix(40).map(\.description).joined(separator: "\n")
            #expect(report.failures.isEmpty, "\(report.failures.count) of \(report.cases) cases failed:\n\(failures)")
        } catch {
            for stop in stops.reversed() { await stop() }
            throw error
        }
        for stop in stops.reversed() { await stop() }
    }

    /// Starts `path` in front of both of the app's ports; returns the listener port that
    /// reaches each (named by the app's protocol) and how to stop what it started.
    private func start(_ path: Path, app: FixtureServer) async throws -> ([(String, Int)], [() async -> Void]) {
        let appAddresses = [
            ("HTTP/1.1 app", AppProtocol.http1, EndpointProtocol.http1, app.port("http1")),
            ("h2c app", AppProtocol.h2c, EndpointProtocol.h2c, app.port("h2c")),
        ]
        var stops: [() async -> Void] = []
        do {
            switch path {
            case .oneSidecar:
                var config = TestMesh.baseConfig("web")
                for (index, (_, _, endpointProtocol, port)) in appAddresses.enumerated() {
                    var cluster = ClusterConfig(name: "app\(index)")
                    cluster.protocol = endpointProtocol
                    cluster.endpoints = [EndpointConfig(address: HostPort(host: TestMesh.loopback, port: port))]
                    config.clusters.append(cluster)
                    config.upstreams.append(UpstreamConfig(listen: TestMesh.any(), cluster: cluster.name))
                }
                let sidecar = try await TestMesh.startSidecar(config)
                stops.append { await sidecar.stop() }
                return (
                    appAddresses.enumerated().map { index, app in (app.0, sidecar.port("upstream:app\(index)")) },
                    stops
                )
            case .meshPair, .gatewayInFrontOfThePair:
                var clusters: [ClusterConfig] = []
                for (index, (_, appProtocol, _, port)) in appAddresses.enumerated() {
                    var config = TestMesh.baseConfig("app\(index)")
                    config.tls = TestMesh.tls("orders")
                    var inbound = InboundConfig(
                        listen: TestMesh.any(),
                        app: HostPort(host: TestMesh.loopback, port: port)
                    )
                    inbound.protocol = appProtocol
                    config.inbound = inbound
                    let server = try await TestMesh.startSidecar(config)
                    stops.append { await server.stop() }
                    clusters.append(TestMesh.cluster("app\(index)", .mesh, [server.addresses["inbound"]]))
                }
                var config = TestMesh.baseConfig(path == .meshPair ? "web" : "edge")
                config.tls = TestMesh.tls("web")
                config.clusters = clusters
                for cluster in clusters {
                    if path == .meshPair {
                        config.upstreams.append(UpstreamConfig(listen: TestMesh.any(), cluster: cluster.name))
                    } else {
                        var listener = GatewayListenerConfig(name: cluster.name, listen: TestMesh.any())
                        listener.routes = [GatewayRoute(service: cluster.name)]
                        config.listeners.append(listener)
                    }
                }
                let front = try await TestMesh.startSidecar(config)
                stops.append { await front.stop() }
                let prefix = path == .meshPair ? "upstream:" : "gateway:"
                return (
                    appAddresses.enumerated().map { index, app in (app.0, front.port("\(prefix)app\(index)")) },
                    stops
                )
            }
        } catch {
            for stop in stops.reversed() { await stop() }
            throw error
        }
    }
}

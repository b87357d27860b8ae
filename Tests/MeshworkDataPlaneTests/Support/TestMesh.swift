import Foundation
import Logging
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import NIOCore
import NIOPosix
import Prometheus

/// Shared fixtures for the end-to-end tests: one event loop group, certificates, and
/// helpers to start demo apps and sidecars on 127.0.0.1 with kernel-chosen ports.
enum TestMesh {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)

    static let certs = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/certs").path

    static let clients = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/clients").path

    static func cert(_ name: String) -> String { "\(certs)/\(name).pem" }
    static func key(_ name: String) -> String { "\(certs)/\(name).key" }

    static func tls(_ name: String) -> TLSFiles {
        TLSFiles(ca: cert("mesh-ca"), cert: cert(name), key: key(name))
    }

    static let loopback = "127.0.0.1"

    static func any() -> HostPort { HostPort(host: loopback, port: 0) }

    static func hostPort(_ address: SocketAddress?) -> HostPort {
        HostPort(host: loopback, port: address?.port ?? 0)
    }

    static func startApp(_ name: String) async throws -> DemoApp {
        try await DemoApp.start(name: name, host: loopback, port: 0, group: group)
    }

    /// A config with only an admin listener on a free port; tests add what they need.
    static func baseConfig(_ service: String) -> SidecarConfig {
        var config = SidecarConfig()
        config.service = service
        config.admin = any()
        return config
    }

    static func startSidecar(_ config: SidecarConfig) async throws -> RunningSidecar {
        var logger = Logger(label: "test.sidecar.\(config.service)")
        logger.logLevel = .warning
        let registry = PrometheusCollectorRegistry()
        let sidecar = try Sidecar(config: config, group: group, registry: registry, logger: logger)
        try await sidecar.start()
        return RunningSidecar(sidecar: sidecar, addresses: await sidecar.boundAddresses, registry: registry)
    }

    /// An app behind a server sidecar whose inbound takes mTLS from peers.
    static func startServerSide(
        service: String = "orders",
        appProtocol: AppProtocol = .http1,
        tlsName: String = "orders",
        configure: (inout SidecarConfig) -> Void = { _ in }
    ) async throws -> (app: DemoApp, sidecar: RunningSidecar) {
        let app = try await startApp("\(service)-1")
        var config = baseConfig(service)
        config.tls = tls(tlsName)
        var inbound = InboundConfig(listen: any(), app: hostPort(app.address))
        inbound.protocol = appProtocol
        config.inbound = inbound
        configure(&config)
        return (app, try await startSidecar(config))
    }

    /// `startServerSide`, stopped (awaited) when `body` returns or throws.
    static func withServerSide(
        _ body: ((app: DemoApp, sidecar: RunningSidecar)) async throws -> Void
    ) async throws {
        let server = try await startServerSide()
        do {
            try await body(server)
        } catch {
            await server.sidecar.stop()
            await server.app.stop()
            throw error
        }
        await server.sidecar.stop()
        await server.app.stop()
    }

    /// `startSidecar`, stopped (awaited) when `body` returns or throws.
    static func withSidecar(_ config: SidecarConfig, _ body: (RunningSidecar) async throws -> Void) async throws {
        let sidecar = try await startSidecar(config)
        do {
            try await body(sidecar)
        } catch {
            await sidecar.stop()
            throw error
        }
        await sidecar.stop()
    }

    /// A server side (app + sidecar with mTLS inbound) and a client sidecar whose upstream
    /// port reaches it over the mesh.
    static func startPair(
        appProtocol: AppProtocol = .http1,
        listenerProtocol: ListenerProtocol = .http,
        serverTLS: String = "orders",
        configureServer: (inout SidecarConfig) -> Void = { _ in }
    ) async throws -> (server: (app: DemoApp, sidecar: RunningSidecar), client: RunningSidecar) {
        let server = try await startServerSide(appProtocol: appProtocol, tlsName: serverTLS, configure: configureServer)
        let client = try await startClientSide(
            cluster: cluster("orders", .mesh, [server.sidecar.addresses["inbound"]]),
            listenerProtocol: listenerProtocol
        )
        return (server, client)
    }

    /// A demo app behind a client sidecar whose upstream port reaches it directly (no
    /// peer sidecar); both are stopped when `body` returns or throws.
    static func withAppBehindSidecar(
        _ protocol: EndpointProtocol = .http1,
        listenerProtocol: ListenerProtocol = .http,
        configure: (inout SidecarConfig) -> Void = { _ in },
        _ body: (DemoApp, RunningSidecar) async throws -> Void
    ) async throws {
        let app = try await startApp("orders-1")
        let sidecar: RunningSidecar
        do {
            sidecar = try await startClientSide(
                cluster: cluster("orders", `protocol`, [app.address]),
                listenerProtocol: listenerProtocol,
                configure: configure
            )
        } catch {
            await app.stop()
            throw error
        }
        do {
            try await body(app, sidecar)
        } catch {
            await sidecar.stop()
            await app.stop()
            throw error
        }
        await sidecar.stop()
        await app.stop()
    }

    /// A port that refuses connections: 1 (tcpmux) has no listener on these machines.
    /// Borrowing a port from the kernel and closing it would race with other tests'
    /// servers, which may be handed the same port a moment later.
    static let refusingPort = 1

    /// `startPair`, with everything stopped when `body` returns or throws.
    static func withPair(
        appProtocol: AppProtocol = .http1,
        listenerProtocol: ListenerProtocol = .http,
        serverTLS: String = "orders",
        configureServer: (inout SidecarConfig) -> Void = { _ in },
        _ body: ((app: DemoApp, sidecar: RunningSidecar), RunningSidecar) async throws -> Void
    ) async throws {
        let (server, client) = try await startPair(
            appProtocol: appProtocol,
            listenerProtocol: listenerProtocol,
            serverTLS: serverTLS,
            configureServer: configureServer
        )
        do {
            try await body(server, client)
        } catch {
            await client.stop()
            await server.sidecar.stop()
            await server.app.stop()
            throw error
        }
        await client.stop()
        await server.sidecar.stop()
        await server.app.stop()
    }

    /// A client sidecar with an upstream port for `cluster`.
    static func startClientSide(
        cluster: ClusterConfig,
        listenerProtocol: ListenerProtocol = .http,
        configure: (inout SidecarConfig) -> Void = { _ in }
    ) async throws -> RunningSidecar {
        var config = baseConfig("web")
        config.tls = tls("web")
        var upstream = UpstreamConfig(listen: any(), cluster: cluster.name)
        upstream.protocol = listenerProtocol
        config.upstreams = [upstream]
        config.clusters = [cluster]
        configure(&config)
        return try await startSidecar(config)
    }

    static func cluster(
        _ name: String,
        _ protocol: EndpointProtocol,
        _ endpoints: [SocketAddress?]
    ) -> ClusterConfig {
        var cluster = ClusterConfig(name: name)
        cluster.protocol = `protocol`
        cluster.endpoints = endpoints.map { EndpointConfig(address: hostPort($0)) }
        return cluster
    }
}

struct RunningSidecar {
    let sidecar: Sidecar
    let addresses: [String: SocketAddress]
    let registry: PrometheusCollectorRegistry

    func port(_ listener: String) -> Int { addresses[listener]?.port ?? 0 }

    func url(_ listener: String, _ path: String = "/") -> String {
        "http://127.0.0.1:\(port(listener))\(path)"
    }

    var metricsText: String { String(decoding: registry.emitToBuffer(), as: UTF8.self) }

    /// The value of one Prometheus sample line (exact name and labels as exposed).
    func metric(_ series: String) -> Double? {
        for line in metricsText.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    func stop() async {
        await sidecar.drain()
    }
}

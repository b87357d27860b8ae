import Foundation
import MeshworkDataPlane
import MeshworkModel
import MeshworkTraffic
import Testing

/// gRPC across the mesh with the real gRPC library on both ends (Python's grpcio:
/// `Fixtures/clients/grpc_interop.py`): grpc's interop cases, every status code with
/// details and trailing metadata (Trailers-Only and after messages), a status sent late,
/// 4 MiB messages, cancellation, deadlines and the health service; and the mesh's own
/// answers to gRPC calls, which must be gRPC statuses.
@Suite("gRPC across the mesh", .serialized)
struct GRPCTests {
    /// The cases `grpc_interop.py client` runs, each of which must report "ok".
    static let cases = [
        "empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong", "empty_stream",
        "timeout_on_sleeping_server", "cancel_after_begin", "cancel_after_first_response",
        "cancellation_reaches_the_server",
        "status_code_and_message", "special_status_message", "custom_metadata", "unimplemented_method",
        "unimplemented_service", "every_status_trailers_only", "every_status_after_messages",
        "status_delayed_after_last_message", "messages_of_4_mib", "caller_deadline_wins", "health_service",
    ]

    /// Runs every case through `port` and expects each to pass.
    private func runInteropCases(port: Int, path: String) async throws {
        let result = try await Command.run(
            ["timeout", "180", "python3", "\(TestMesh.clients)/grpc_interop.py", "client", String(port)]
        )
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        let report = try? JSONDecoder().decode([String: String].self, from: Data(line.utf8))
        try #require(report != nil, "grpc_interop.py client failed (\(result.exitCode)): \(result.output)")
        #expect(Set(report!.keys) == Set(Self.cases), "\(path): cases run: \(report!.keys.sorted())")
        for name in Self.cases {
            #expect(report![name] == "ok", "\(path): \(name): \(report![name] ?? "not run")")
        }
    }

    enum Path: String, CaseIterable, CustomTestStringConvertible {
        /// grpcio client -> one sidecar -> h2c -> grpcio server.
        case oneSidecar
        /// grpcio client -> client sidecar -> mTLS + HTTP/2 -> server sidecar -> grpcio server.
        case meshPair
        var testDescription: String { rawValue }
    }

    @Test(arguments: Path.allCases)
    func interopCasesPass(path: Path) async throws {
        let server = try await FixtureServer.start("grpc_interop.py", ["server"])
        var stops: [() async -> Void] = [{ await server.stop() }]
        do {
            let address = HostPort(host: TestMesh.loopback, port: server.port("grpc"))
            let port: Int
            switch path {
            case .oneSidecar:
                var cluster = ClusterConfig(name: "orders")
                cluster.protocol = .h2c
                cluster.endpoints = [EndpointConfig(address: address)]
                let sidecar = try await TestMesh.startClientSide(cluster: cluster)
                stops.append { await sidecar.stop() }
                port = sidecar.port("upstream:orders")
            case .meshPair:
                let serverSidecar = try await startServerSidecar(app: address)
                stops.append { await serverSidecar.stop() }
                let client = try await TestMesh.startClientSide(
                    cluster: TestMesh.cluster("orders", .mesh, [serverSidecar.addresses["inbound"]])
                )
                stops.append { await client.stop() }
                port = client.port("upstream:orders")
            }
            try await runInteropCases(port: port, path: path.rawValue)
        } catch {
            for stop in stops.reversed() { await stop() }
            throw error
        }
        for stop in stops.reversed() { await stop() }
    }

    /// The same cases between sidecars that joined a real controller (identities from its CA,
    /// the server found by discovery), and then the controller's deny policy refusing the
    /// call as PERMISSION_DENIED.
    @Test func interopCasesPassBetweenSidecarsOfAControllerAndItsDenialIsPermissionDenied() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let server = try await FixtureServer.start("grpc_interop.py", ["server"])
        var sidecars: [SidecarProcess] = []
        do {
            let serverSidecar = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(server.port("grpc")), "--app-protocol", "h2c",
                    "--controller", controller.url, "--join-token-file",
                    try await controller.joinTokenFile("orders"), "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(serverSidecar)
            #expect(try await serverSidecar.waitForLog("registered"), "\(serverSidecar.log)")
            let client = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(client)
            let port = client.port("upstream:orders") ?? 0
            #expect(try await waitUntilCalls(port: port, code: "OK"), "\(client.log)")
            try await runInteropCases(port: port, path: "controller")

            let mesh = try await controller.call("PUT", "/v1/mesh", body: #"{"defaultAuthorization": "deny"}"#)
            #expect(mesh.status == 200, "\(mesh.text)")
            #expect(try await waitUntilCalls(port: port, code: "PERMISSION_DENIED"))
            let denied = try await call(port: port, timeout: 5)
            #expect(denied.code == "PERMISSION_DENIED", "\(denied)")
            #expect(denied.trailing["x-meshwork-error"] == "unauthorized", "\(denied)")
            #expect(denied.details == "meshwork: unauthorized", "\(denied)")
        } catch {
            for sidecar in sidecars { await sidecar.stop() }
            await server.stop()
            await controller.stop()
            controller.remove()
            throw error
        }
        for sidecar in sidecars { await sidecar.stop() }
        await server.stop()
        await controller.stop()
        controller.remove()
    }

    /// The mesh's own refusals and failures of a gRPC call: HTTP 200 with `grpc-status`
    /// naming what happened, `grpc-message` and `x-meshwork-error` naming why; never an
    /// HTTP error status that a gRPC client can only read as UNAVAILABLE or UNKNOWN.
    @Test func meshErrorsOnGRPCCallsAreGRPCStatuses() async throws {
        let server = try await FixtureServer.start("grpc_interop.py", ["server"])
        var stops: [() async -> Void] = [{ await server.stop() }]
        do {
            let app = HostPort(host: TestMesh.loopback, port: server.port("grpc"))
            // The server side admits one call per 10 s (a burst of 1).
            let serverSidecar = try await startServerSidecar(app: app) { config in
                config.inbound?.rateLimit = RateLimitConfig(requestsPerSecond: 0.1, burst: 1)
            }
            stops.append { await serverSidecar.stop() }
            var config = TestMesh.baseConfig("web")
            config.tls = TestMesh.tls("web")
            var clusters = [
                TestMesh.cluster("limited", .mesh, [serverSidecar.addresses["inbound"]]),
                ClusterConfig(name: "empty"),
                TestMesh.cluster("refusing", .h2c, []),
                TestMesh.cluster("slow", .h2c, []),
            ]
            clusters[2].endpoints = [EndpointConfig(address: HostPort(host: TestMesh.loopback, port: 1))]
            clusters[3].endpoints = [EndpointConfig(address: app)]
            clusters[3].requestTimeout = .milliseconds(300)
            for index in clusters.indices { clusters[index].retries.attempts = 0 }
            config.clusters = clusters
            config.upstreams = clusters.map { UpstreamConfig(listen: TestMesh.any(), cluster: $0.name) }
            let client = try await TestMesh.startSidecar(config)
            stops.append { await client.stop() }

            let empty = try await call(port: client.port("upstream:empty"), timeout: 5)
            #expect(empty.code == "UNAVAILABLE" && empty.mesh == "no_healthy_endpoint", "\(empty)")
            let refused = try await call(port: client.port("upstream:refusing"), timeout: 5)
            #expect(refused.code == "UNAVAILABLE" && refused.mesh == "connect_failed", "\(refused)")

            // The mesh's deadline (300 ms) is shorter than the caller's (5 s): the mesh's
            // answer is DEADLINE_EXCEEDED, when its deadline passed.
            let slow = try await call(port: client.port("upstream:slow"), timeout: 5)
            #expect(slow.code == "DEADLINE_EXCEEDED" && slow.mesh == "upstream_timeout", "\(slow)")
            #expect(slow.seconds >= 0.25 && slow.seconds < 2, "\(slow)")
            // The caller's (300 ms) is shorter than the mesh's (15 s) across the pair: the
            // caller's wins, DEADLINE_EXCEEDED at it, from whichever side gave up first.
            let short = try await call(port: client.port("upstream:limited"), timeout: 0.3)
            #expect(short.code == "DEADLINE_EXCEEDED" && short.seconds < 1.5, "\(short)")

            // Over the server's rate limit: RESOURCE_EXHAUSTED (the token was spent above).
            let limited = try await call(port: client.port("upstream:limited"), timeout: 5, sleepMS: 0)
            #expect(limited.code == "RESOURCE_EXHAUSTED" && limited.mesh == "rate_limited", "\(limited)")
            #expect(limited.details == "meshwork: rate_limited", "\(limited)")
        } catch {
            for stop in stops.reversed() { await stop() }
            throw error
        }
        for stop in stops.reversed() { await stop() }
    }

    private func startServerSidecar(
        app: HostPort,
        configure: (inout SidecarConfig) -> Void = { _ in }
    ) async throws -> RunningSidecar {
        var config = TestMesh.baseConfig("orders")
        config.tls = TestMesh.tls("orders")
        var inbound = InboundConfig(listen: TestMesh.any(), app: app)
        inbound.protocol = .h2c
        config.inbound = inbound
        configure(&config)
        return try await TestMesh.startSidecar(config)
    }

    struct CallResult: Decodable, CustomStringConvertible {
        var code: String
        var details: String?
        var seconds: Double
        var trailing: [String: String]
        var mesh: String? { trailing["x-meshwork-error"] }
        var description: String { "\(code) \(details ?? "") after \(seconds) s, trailing \(trailing)" }
    }

    /// One call of Probe/Sleep (the server sleeps `sleepMS`) with the caller's deadline.
    private func call(port: Int, timeout: Double, sleepMS: Int = 3000) async throws -> CallResult {
        let result = try await Command.run([
            "timeout", "30", "python3", "\(TestMesh.clients)/grpc_interop.py", "call", String(port), "Sleep",
            String(timeout), String(sleepMS),
        ])
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        guard let answer = try? JSONDecoder().decode(CallResult.self, from: Data(line.utf8)) else {
            return CallResult(code: "no answer: \(result.output)", seconds: 0, trailing: [:])
        }
        return answer
    }

    /// Bounded (10 s): until a quick call through `port` ends with `code`.
    private func waitUntilCalls(port: Int, code: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if try await call(port: port, timeout: 2, sleepMS: 0).code == code { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}

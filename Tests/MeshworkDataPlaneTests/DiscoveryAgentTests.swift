import Foundation
import Logging
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import Prometheus
import ServiceLifecycle
import Testing

@testable import MeshworkDiscovery

/// The discovery agent's services against the in-memory controller link: registration,
/// heartbeats, re-registration, deregistration, the watch and its cache, with a real
/// sidecar and app but no controller process.
@Suite("Discovery agent on an in-memory controller")
struct DiscoveryAgentTests {
    /// An orders sidecar in front of a demo app, its agent's services in a ServiceGroup
    /// over `client`; `body` runs while they do, then the group shuts down gracefully and
    /// is awaited.
    private func withAgent(
        _ client: InMemoryControllerClient,
        discover: [String] = [],
        _ body: (Sidecar, String) async throws -> Void
    ) async throws {
        let app = try await TestMesh.startApp("orders-1")
        let cacheFile = FileManager.default.temporaryDirectory
            .appendingPathComponent("meshwork-agent-\(UUID().uuidString).cache").path
        var config = TestMesh.baseConfig("orders")
        var controller = ControllerLink(url: "http://in-memory.invalid")
        controller.cacheFile = cacheFile
        config.controller = controller
        config.discover = discover
        config.inbound = InboundConfig(
            listen: HostPort(host: "127.0.0.1", port: 0),
            app: HostPort(host: "127.0.0.1", port: app.port)
        )
        config.instance.ttl = .milliseconds(600)
        config.healthCheck.interval = .milliseconds(100)
        var logger = Logger(label: "test.agent")
        logger.logLevel = .critical
        let sidecar = try Sidecar(
            config: config,
            group: TestMesh.group,
            registry: PrometheusCollectorRegistry(),
            logger: logger
        )
        try await sidecar.start()
        let agent = await DiscoveryAgent.assemble(
            config: config,
            sidecar: sidecar,
            group: TestMesh.group,
            logger: logger,
            client: client,
            http: nil
        )
        let group = ServiceGroup(
            configuration: .init(services: agent.services.map { .init(service: $0) }, logger: logger)
        )
        let running = Task { try await group.run() }
        do {
            try await body(sidecar, cacheFile)
        } catch {
            await group.triggerGracefulShutdown()
            _ = await running.result
            await sidecar.drain()
            await app.stop()
            try? FileManager.default.removeItem(atPath: cacheFile)
            throw error
        }
        await group.triggerGracefulShutdown()
        try await running.value
        await sidecar.drain()
        await app.stop()
        try? FileManager.default.removeItem(atPath: cacheFile)
    }

    /// Polls `condition` every 20 ms for up to 10 s.
    private func eventually(_ condition: () async -> Bool) async throws -> Bool {
        for _ in 0..<500 {
            if await condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    @Test func registersHeartbeatsAndDeregistersOnShutdown() async throws {
        let client = InMemoryControllerClient()
        var id = ""
        try await withAgent(client) { sidecar, _ in
            let held1 = try await eventually { await client.state.instances.values.contains { $0.service == "orders" } }
            #expect(held1)
            id = await client.state.instances.values.first { $0.service == "orders" }?.id ?? ""
            // The app answers its health checks: the instance turns healthy; heartbeats go on.
            let held2 = try await eventually { await client.state.instances[id]?.health == .healthy }
            #expect(held2)
            let held3 = try await eventually { await client.heartbeats >= 2 }
            #expect(held3)
            #expect(await sidecar.instanceID == id)
        }
        #expect(await client.deregistered == [id])
        #expect(await client.state.instances[id] == nil)
    }

    @Test func registersAgainWhenTheControllerForgotTheInstance() async throws {
        let client = InMemoryControllerClient()
        try await withAgent(client) { _, _ in
            let held4 = try await eventually { await client.registrations == 1 }
            #expect(held4)
            let id = await client.state.instances.values.first?.id ?? ""
            await client.forget(id)
            let held5 = try await eventually { await client.registrations == 2 }
            #expect(held5)
            let held6 = try await eventually { await client.state.instances[id] != nil }
            #expect(held6)
        }
    }

    @Test func appliesWatchedChangesAndCachesThemAndFollowsAReturningController() async throws {
        let client = InMemoryControllerClient()
        try await withAgent(client, discover: ["payments"]) { sidecar, cacheFile in
            let held7 = try await eventually { sidecar.readiness.discovery }
            #expect(held7)
            var payments = InstanceResource(id: "payments-1", service: "payments", address: "127.0.0.1", port: 9)
            payments.health = .healthy
            await client.put(payments)
            let held8 = try await eventually { Self.cache(cacheFile).contains("payments-1") }
            #expect(held8)
            // Away: the watch fails and retries; the sidecar keeps what it knew.
            let attempts = await client.watchAttempts
            await client.setUnreachable(true)
            // Two failed reconnections (0.2 s, then 0.4 s of backoff).
            let held9 = try await eventually { await client.watchAttempts >= attempts + 2 }
            #expect(held9)
            #expect(Self.cache(cacheFile).contains("payments-1"))
            await client.setUnreachable(false)
            payments.id = "payments-2"
            await client.put(payments)
            let held10 = try await eventually { Self.cache(cacheFile).contains("payments-2") }
            #expect(held10)
        }
    }

    private static func cache(_ file: String) -> String {
        (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
    }
}

import Foundation
import MeshworkDemo
import MeshworkModel
import NIOCore
import Testing

/// A sidecar whose policies come from a controller fails closed: until it has its first
/// authorization state (from the controller or its cache) its inbound listener refuses
/// every caller with 503 `not_ready`, rather than admitting everyone; once the controller
/// answers, calls go through.
@Suite("Fail closed end to end", .serialized)
struct FailClosedTests {
    @Test func theInboundRefusesWithNotReadyUntilTheFirstPoliciesArrive() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        // A controller that is down when the sidecar starts (its port known, so it can come
        // back on it).
        let controller = try await ControllerProcess.start()
        await controller.stop()
        let orders = try await TestMesh.startApp("orders-1")
        let configFile = controller.dataDirectory + "-orders.yaml"
        var server: SidecarProcess?
        var client: RunningSidecar?
        do {
            try """
            service: orders
            admin: 127.0.0.1:0
            tls: {ca: \(TestMesh.cert("mesh-ca")), cert: \(TestMesh.cert("orders")), key: \(TestMesh.key("orders"))}
            inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:\(orders.port)}
            controller: {url: \(controller.url), tokenFile: \(controller.dataDirectory)/token, startupWait: 1s}
            """.write(toFile: configFile, atomically: true, encoding: .utf8)
            let sidecar = try await SidecarProcess.start(["--config", configFile], waitFor: ["inbound", "admin"])
            server = sidecar
            let inbound = try #require(sidecar.port("inbound"))
            let caller = try await TestMesh.startClientSide(
                cluster: TestMesh.cluster(
                    "orders",
                    .mesh,
                    [try SocketAddress(ipAddress: TestMesh.loopback, port: inbound)]
                )
            )
            client = caller

            // With no state, the inbound accepts only after its startup wait (1 s here),
            // and then fails closed.
            let refused = try await Curl.get(caller.url("upstream:orders", "/"))
            #expect(refused.status == 503, "\(refused.status) \(refused.text)")
            #expect(refused.header("x-meshwork-error") == "not_ready")
            #expect(orders.requestCount == 0, "a call reached the app before any policy was known")
            // And it says so to its probes.
            let adminURL = "http://127.0.0.1:\(sidecar.port("admin") ?? 0)/ready"
            let notReady = try await Curl.get(adminURL)
            #expect(notReady.status == 503 && notReady.text == "not ready: discovery\n", "\(notReady.text)")

            // The controller is back: the sidecar gets its state and lets calls through.
            try await controller.restart(samePort: true)
            let deadline = ContinuousClock.now + .seconds(20)
            var status = 0
            while ContinuousClock.now < deadline {
                status = try await Curl.get(caller.url("upstream:orders", "/")).status
                if status == 200 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(status == 200, "\(sidecar.log)")
            let ready = try await Curl.get(adminURL)
            #expect(ready.status == 200 && ready.text == "ready\n", "\(ready.text)")
        } catch {
            await client?.stop()
            await server?.stop()
            await orders.stop()
            await controller.stop()
            controller.remove()
            try? FileManager.default.removeItem(atPath: configFile)
            throw error
        }
        await client?.stop()
        await server?.stop()
        await orders.stop()
        await controller.stop()
        controller.remove()
        try? FileManager.default.removeItem(atPath: configFile)
    }
}

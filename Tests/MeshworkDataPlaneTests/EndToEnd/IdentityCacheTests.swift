import Foundation
import MeshworkDemo
import Testing

/// Sidecars on join tokens that crashed come back while the controller is away: their
/// identities (key and certificate, in `<cache-file>.identity`, mode 0600) and their
/// discovery state come from their caches, so web still reaches orders over mTLS; when the
/// controller returns, orders registers again with its cached credential (its join token
/// was used up long ago).
@Suite("Identity cache end to end", .serialized)
struct IdentityCacheTests {
    @Test func crashedSidecarsServeMTLSFromTheirCachesWhileTheControllerIsDown() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        let ordersCache = controller.dataDirectory + "-orders.cache"
        let webCache = controller.dataDirectory + "-web.cache"
        do {
            let ordersToken = try await controller.joinTokenFile("orders")
            let webToken = try await controller.joinTokenFile("web")
            func startOrders(inbound: String) async throws -> SidecarProcess {
                try await SidecarProcess.start(
                    [
                        "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                        "--join-token-file", ordersToken, "--ttl", "3s", "--inbound", inbound,
                        "--cache-file", ordersCache,
                    ],
                    waitFor: ["inbound", "admin"]
                )
            }
            func startWeb() async throws -> SidecarProcess {
                try await SidecarProcess.start(
                    [
                        "--service", "web", "--controller", controller.url, "--upstream", "orders=127.0.0.1:0",
                        "--join-token-file", webToken, "--cache-file", webCache,
                    ],
                    waitFor: ["upstream:orders"]
                )
            }
            var server = try await startOrders(inbound: "127.0.0.1:0")
            sidecars.append(server)
            #expect(try await server.waitForLog("registered"), "\(server.log)")
            let inboundPort = try #require(server.port("inbound"))
            var web = try await startWeb()
            sidecars.append(web)
            func call(_ web: SidecarProcess) async throws -> Bool {
                let base = "http://127.0.0.1:\(web.port("upstream:orders") ?? 0)"
                for _ in 0..<100 {
                    if try await Curl.get(base + "/").text.contains("hello from orders-1") { return true }
                    try await Task.sleep(for: .milliseconds(100))
                }
                return false
            }
            try #require(try await call(web), "\(web.log)")
            // Bounded: until both caches are on disk (written at most once a second).
            for _ in 0..<50 where !FileManager.default.fileExists(atPath: webCache) {
                try await Task.sleep(for: .milliseconds(100))
            }
            for file in [ordersCache + ".identity", webCache + ".identity"] {
                let attributes = try FileManager.default.attributesOfItem(atPath: file)
                #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600, "\(file)")
            }

            // Both crash, then the controller goes away.
            await web.stop(kill: true)
            await server.stop(kill: true)
            sidecars.removeAll()
            await controller.stop()

            server = try await startOrders(inbound: "127.0.0.1:\(inboundPort)")
            sidecars.append(server)
            web = try await startWeb()
            sidecars.append(web)
            #expect(try await server.waitForLog("workload identity from the cache"), "\(server.log)")
            #expect(try await web.waitForLog("workload identity from the cache"), "\(web.log)")
            #expect(try await call(web), "web -> orders without a controller: \(web.log)\n\(server.log)")
            #expect(!server.log.contains("refused the join token") && !web.log.contains("refused the join token"))

            // The controller returns: orders registers again with its cached credential.
            try await controller.restart(samePort: true)
            #expect(try await server.waitForLog("registered", seconds: 15), "\(server.log)")
            var registered = false
            for _ in 0..<100 where !registered {
                registered = try await controller.call("GET", "/v1/instances?service=orders").text
                    .contains("\"port\" : \(inboundPort)")
                if !registered { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(registered, "\(server.log)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
        for file in [ordersCache, webCache, ordersCache + ".identity", webCache + ".identity"] {
            try? FileManager.default.removeItem(atPath: file)
        }
    }
}

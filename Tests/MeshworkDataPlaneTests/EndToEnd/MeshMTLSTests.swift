import Foundation
import MeshworkDemo
import Testing

/// `kind: Mesh` with `requireMTLS: true`, applied through the controller (issue 16, item
/// 9): sidecars refuse plaintext peers both ways, and a sidecar without an identity refuses
/// to start; sidecars with identities keep serving over mTLS.
@Suite("Mesh-wide mTLS requirement", .serialized)
struct MeshMTLSTests {
    @Test func requireMTLSRefusesPlaintextHopsAndSidecarsWithoutAnIdentity() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let ordersApp = try await TestMesh.startApp("orders-1")
        let paymentsApp = try await TestMesh.startApp("payments-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            // Started while the mesh allows plaintext: orders and web have no identity.
            let orders = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(ordersApp.port), "--controller", controller.url,
                    "--token-file", controller.dataDirectory + "/token", "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(orders)
            #expect(try await orders.waitForLog("registered"), "\(orders.log)")
            let web = try await SidecarProcess.start(
                ["--service", "web", "--controller", controller.url, "--upstream", "orders=127.0.0.1:0"],
                waitFor: ["upstream:orders"]
            )
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            // payments and shop joined with tokens: mTLS with identities.
            let payments = try await startServer("payments", app: paymentsApp, controller: controller)
            sidecars.append(payments)
            let shop = try await startClient("shop", calling: "payments", controller: controller)
            sidecars.append(shop)
            #expect(try await shop.waitUntilServing("payments"), "\(shop.log)")

            let servedBefore = ordersApp.requestCount
            let applied = try await controller.apply("kind: Mesh\nrequireMTLS: true\n")
            #expect(applied.exitCode == 0, "\(applied.output)")

            // web makes no plaintext hop once it learns the requirement (bounded wait).
            var refused: CurlResult?
            for _ in 0..<100 {
                let result = try await Curl.get(web.upstreamURL("orders") + "/")
                if result.status == 403 {
                    refused = result
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(refused?.header("x-meshwork-error") == "mtls_required", "\(web.log)")
            // orders takes no plaintext caller: the connection is closed unanswered.
            let direct = try await Curl.get("http://127.0.0.1:\(orders.port("inbound") ?? 0)/")
            #expect(direct.status == 0, "\(direct.text)")
            let metrics = try await Curl.get("http://127.0.0.1:\(orders.port("admin") ?? 0)/metrics").text
            #expect(
                metrics.contains(
                    #"meshwork_listener_mesh_errors_total{listener="inbound",kind="inbound",reason="mtls_required"} 1"#
                ),
                "\(metrics.split(separator: "\n").filter { $0.contains("mtls_required") })"
            )
            #expect(ordersApp.requestCount == servedBefore, "no plaintext call reached orders after the requirement")
            // The mTLS hop goes on.
            #expect(try await Curl.get(shop.upstreamURL("payments") + "/").status == 200)

            // A sidecar without an identity refuses to start, and says why.
            let refusedStart = try await Command.run([
                "timeout", "30", CLITests.binary, "sidecar", "--service", "web", "--controller", controller.url,
                "--upstream", "orders=127.0.0.1:0", "--admin", "127.0.0.1:0",
            ])
            #expect(refusedStart.exitCode != 0 && refusedStart.exitCode != 124, "\(refusedStart.output)")
            #expect(refusedStart.output.contains("the mesh requires mTLS"), "\(refusedStart.output)")
            // One with a join token starts and calls.
            let joined = try await startClient("shop", calling: "payments", controller: controller)
            sidecars.append(joined)
            #expect(try await joined.waitUntilServing("payments"), "\(joined.log)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await ordersApp.stop()
        await paymentsApp.stop()
        await controller.stop()
    }
}

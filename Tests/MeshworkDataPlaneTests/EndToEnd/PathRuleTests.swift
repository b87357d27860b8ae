import Foundation
import MeshworkDemo
import Testing

/// Path rules pushed by a real controller cannot be sidestepped: every variant of a denied
/// path (dot segments, encodings, repeated slashes) is refused, a prefix matches on a
/// segment boundary only, ambiguous paths are 400 `bad_path`, and the app receives the
/// normalized path that was authorized. curl sends each target as written
/// (`--path-as-is`).
@Suite("Path rules end to end", .serialized)
struct PathRuleTests {
    @Test func denyAdminAndAllowAPICannotBeSidesteppedAndTheAppGetsTheAuthorizedPath() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        do {
            sidecars.append(try await startServer("orders", app: orders, controller: controller))
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")

            let applied = try await controller.apply(
                """
                kind: AuthorizationPolicy
                name: orders-api
                target: orders
                from: ["spiffe://mesh.local/service/web"]
                paths: [/api, /headers]
                ---
                kind: AuthorizationPolicy
                name: orders-no-admin
                target: orders
                action: deny
                paths: [/admin]
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            // Pushed: `/` is no longer allowed once the allow policy names paths.
            let deadline = ContinuousClock.now + .seconds(10)
            while try await Curl.get(url + "/").status != 403, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }

            func get(_ target: String) async throws -> CurlResult {
                try await Curl.run(["--path-as-is", url + target])
            }
            for target in ["/api", "/api/", "/api/orders", "/api/./orders", "/api//orders?x=/../admin"] {
                #expect(try await get(target).status == 200, "\(target) is allowed")
            }
            let before = orders.requestCount
            for target in [
                "/admin", "/admin/users", "/api/../admin", "/api/x/../../admin", "//admin", "/./admin",
                "/%61dmin", "/%61%64%6d%69%6e/users", "/api/%2e%2e/admin", "/api/.%2E/admin", "/api//../admin",
                "/api-internal", "/apix", "/",
            ] {
                let answer = try await get(target)
                #expect(answer.status == 403, "\(target): \(answer.status)")
                #expect(answer.header("x-meshwork-error") == "unauthorized", "\(target)")
            }
            for target in ["/api%2Fadmin", "/api%2fx", "/api%5Cadmin", "/api\\admin", "/api/x%00", "/api%zz", "/api%4"]
            {
                let answer = try await get(target)
                #expect(answer.status == 400, "\(target): \(answer.status)")
                #expect(answer.header("x-meshwork-error") == "bad_path", "\(target)")
            }
            #expect(orders.requestCount == before, "a refused call reached the app")

            // What was authorized is what the app serves: the normalized path.
            for target in ["/headers", "/api/x/../../headers", "//headers", "/%68eaders", "/./headers/."] {
                let echoed = try await get(target)
                #expect(echoed.status == 200, "\(target): \(echoed.status)")
                let requestLine = echoed.text.split(separator: "\n").first.map(String.init) ?? ""
                let expected = target.hasSuffix("/.") ? "GET /headers/ HTTP/1.1" : "GET /headers HTTP/1.1"
                #expect(requestLine == expected, "\(target) reached the app as \(requestLine)")
            }
        } catch {
            for sidecar in sidecars { await sidecar.stop() }
            await orders.stop()
            await controller.stop()
            controller.remove()
            throw error
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
        controller.remove()
    }
}

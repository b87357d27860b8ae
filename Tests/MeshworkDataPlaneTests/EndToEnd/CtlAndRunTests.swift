import Foundation
import MeshworkDemo
import Testing

/// `meshwork ctl` and `meshwork run` as an operator uses them, against a real controller.
@Suite("ctl and run")
struct CtlAndRunTests {
    private func ctl(
        _ controller: ControllerProcess,
        _ arguments: [String]
    ) async throws -> (
        exitCode: Int32, output: String
    ) {
        try await Command.run(
            [CLITests.binary, "ctl"] + [
                arguments[0], "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token",
            ] + arguments.dropFirst()
        )
    }

    @Test func applyListDescribeDeleteAndClearErrors() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let file = controller.dataDirectory + "-resources.yaml"
        try """
        kind: Service
        name: orders
        policy:
          balancer: least-request
        ---
        kind: Instance
        id: orders-a
        service: orders
        address: 127.0.0.1
        port: 8081
        zone: eu-1a
        ttlSeconds: 0
        """.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }

        let applied = try await ctl(controller, ["apply", "-f", file])
        #expect(applied.exitCode == 0, "\(applied.output)")
        #expect(
            applied.output.contains("service orders applied") && applied.output.contains("instance orders-a applied")
        )

        let services = try await ctl(controller, ["services"])
        #expect(services.output.contains("NAME"))
        #expect(
            services.output.split(separator: "\n").contains { $0.hasPrefix("orders") && $0.contains("least-request") }
        )
        let instances = try await ctl(controller, ["instances", "orders", "-o", "json"])
        let list = try JSONSerialization.jsonObject(with: Data(instances.output.utf8)) as? [[String: Any]]
        #expect(list?.first?["zone"] as? String == "eu-1a")
        let described = try await ctl(controller, ["describe", "instance", "orders-a"])
        #expect(described.output.contains("address: 127.0.0.1"))

        try "kind: Instance\nservice: orders\naddress: 127.0.0.1\nport: 99999\n".write(
            toFile: file,
            atomically: true,
            encoding: .utf8
        )
        let refused = try await ctl(controller, ["apply", "-f", file])
        #expect(refused.exitCode == 1)
        #expect(refused.output.contains("port: must be between 1 and 65535, found 99999"), "\(refused.output)")

        #expect(try await ctl(controller, ["delete", "instance", "orders-a"]).exitCode == 0)
        let missing = try await ctl(controller, ["describe", "instance", "orders-a"])
        #expect(missing.exitCode == 1 && missing.output.contains("404"))
        await controller.stop()
        // Not the stopped controller's port: another test's process may have it by now.
        let refusing = try RefusingPort()
        let unreachable = try await Command.run([
            CLITests.binary, "ctl", "services", "--controller", "http://127.0.0.1:\(refusing.port)",
        ])
        #expect(unreachable.exitCode == 1)
        #expect(unreachable.output.contains("cannot reach the controller"), "\(unreachable.output)")
    }

    /// The app starts only once its sidecar can route: its first act, with no pause, is to
    /// ask `/ready` and to call `orders` through the sidecar, and both must answer 200.
    /// Before, the app started as soon as the ports were bound: `/ready` said ready and the
    /// first call met an empty cluster (503 `no_healthy_endpoint`).
    @Test func runStartsTheAppOnceItsSidecarCanRouteAndExitsWithItsCode() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let ordersApp = try await TestMesh.startApp("orders-1")
        let orders = try await startServer("orders", app: ordersApp, controller: controller)
        let script = #"""
            curl -sf "http://$MESHWORK_ADMIN/ready" >/dev/null || exit 4
            curl -sf "http://$MESHWORK_UPSTREAM_ORDERS/" >/dev/null || exit 5
            exit 3
            """#
        let result = try await Command.run([
            CLITests.binary, "run", "--service", "web", "--app-port", String(TestMesh.refusingPort),
            "--upstream", "orders=127.0.0.1:0", "--controller", controller.url,
            "--join-token-file", try await controller.joinTokenFile("web"), "--threads", "1",
            "--", "/bin/sh", "-c", script,
        ])
        #expect(result.exitCode == 3, "4: not ready, 5: the call failed; \(result.output)")
        #expect(result.output.contains("registered"))
        #expect(result.output.contains("deregistered"))
        // Deregistered on the way out, not left to its lease.
        let listed = try await controller.call("GET", "/v1/instances")
        #expect(!listed.text.contains("\"web-"), "\(listed.text)")
        await orders.stop()
        await ordersApp.stop()
        await controller.stop()
    }
}

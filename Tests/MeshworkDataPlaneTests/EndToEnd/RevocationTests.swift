import Foundation
import MeshworkDemo
import Testing

/// `ctl credentials revoke` (issue 16, item 8): the revoked instance's credential stops
/// working, its renewals are refused, and peers refuse its certificate at their next
/// handshake, within one push of the watch stream; joining again with a new token works.
@Suite("Revocation end to end", .serialized)
struct RevocationTests {
    @Test func aRevokedInstanceIsRefusedByPeersAndLosesItsCredential() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            let server = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(server)
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            try #require(try await web.waitUntilServing("orders"), "\(web.log)")
            let listed = try await controller.call("GET", "/v1/instances?service=orders")
            let instances = try #require(try JSONSerialization.jsonObject(with: listed.body) as? [[String: Any]])
            let id = try #require(instances.first?["id"] as? String, "\(listed.text)")

            let revoked = try await Command.run([
                CLITests.binary, "ctl", "credentials", "revoke", "--instance", id, "--controller", controller.url,
                "--token-file", controller.dataDirectory + "/token",
            ])
            #expect(revoked.exitCode == 0 && revoked.output.contains("1 certificate(s) revoked"), "\(revoked.output)")
            let serial = try #require(
                revoked.output.split(separator: "\n").dropFirst().first?.trimmingCharacters(in: .whitespaces)
            )
            let list = try await controller.call("GET", "/v1/revocations")
            #expect(list.text.contains(serial), "\(list.text)")

            // web refuses orders' certificate at its next handshake (its pooled connection is
            // retired when the list arrives): the call fails, bounded wait.
            var status = 200
            for _ in 0..<100 where status == 200 {
                status = try await Curl.get(web.upstreamURL("orders") + "/").status
                if status == 200 { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(status == 502 || status == 503, "still served after the revocation")
            #expect(try await web.waitForLog("a revoked certificate (serial \(serial))"), "\(web.log)")

            // orders' credential is gone: its heartbeats are refused.
            #expect(try await server.waitForLog("not recognised"), "\(server.log)")

            // A new orders sidecar, joined with a new token, serves again.
            await server.stop()
            sidecars.removeAll { $0 === server }
            let rejoined = try await startServer("orders", app: orders, controller: controller)
            sidecars.append(rejoined)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")

            // Revoking the service web: the orders sidecar refuses web's client certificate
            // (the inbound check), so web's calls fail again.
            let byService = try await controller.call("POST", "/v1/revocations", body: #"{"service": "web"}"#)
            let answer = try JSONSerialization.jsonObject(with: byService.body) as? [String: Any]
            #expect((answer?["revoked"] as? [String])?.count == 1, "\(byService.text)")
            status = 200
            for _ in 0..<100 where status == 200 {
                status = try await Curl.get(web.upstreamURL("orders") + "/").status
                if status == 200 { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(status == 502 || status == 503, "web still served after its service was revoked")
            #expect(try await rejoined.waitForLog("a revoked certificate"), "\(rejoined.log)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }

    @Test func aRevocationNamesExactlyOneScope() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let both = try await controller.call("POST", "/v1/revocations", body: #"{"instance": "a", "service": "b"}"#)
        #expect(both.status == 400 && both.text.contains("exactly one"), "\(both.text)")
        let none = try await controller.call("POST", "/v1/revocations", body: "{}")
        #expect(none.status == 400, "\(none.text)")
        let anonymous = try await controller.call(
            "POST",
            "/v1/revocations",
            body: #"{"service": "b"}"#,
            authorized: false
        )
        #expect(anonymous.status == 401)
        await controller.stop()
    }
}

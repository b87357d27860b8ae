import Foundation
import MeshworkDemo
import Testing

/// The controller's default: its API over TLS with a certificate from the mesh CA. Join
/// tokens carry the CA's SHA-256 pin, so sidecars on join tokens verify the controller with
/// no CA file handed to them; a token naming another CA makes the sidecar stop with the
/// reason before it sends anything.
@Suite("Controller TLS by default end to end", .serialized)
struct ControllerTLSTests {
    @Test func sidecarsVerifyTheDefaultTLSControllerByTheirTokensPin() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start(defaultTLS: true)
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            #expect(controller.url.hasPrefix("https://"))
            #expect(try await controller.call("GET", "/v1/services").status == 200)
            // Plain HTTP to it gets nowhere.
            #expect(try await Curl.get("http://127.0.0.1:\(controller.port)/v1/services").status != 200)

            // The token's third part is the SHA-256 of the root's DER.
            let tokenFile = try await controller.joinTokenFile("orders")
            let token = try String(contentsOfFile: tokenFile, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let parts = token.split(separator: ".")
            #expect(parts.count == 3, "\(token)")
            let digest = try await Command.run([
                "sh", "-c", "openssl x509 -in \(controller.caFile) -outform DER | sha256sum | cut -d' ' -f1",
            ])
            #expect(digest.output.trimmingCharacters(in: .whitespacesAndNewlines) == String(parts.last ?? ""))

            // Sidecars with nothing but the https:// URL and their join tokens.
            let server = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", tokenFile, "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(server)
            #expect(try await server.waitForLog("controller verified by the join token's CA pin"), "\(server.log)")
            #expect(try await server.waitForLog("registered"), "\(server.log)")
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            let ready = try await web.waitUntilServing("orders")
            #expect(ready, "web -> orders through a TLS controller: \(web.log)")

            // A pin of another CA: refused before any request, the sidecar stops and says why.
            let wrong = parts.dropLast().joined(separator: ".") + "." + String(repeating: "ab", count: 32)
            let wrongFile = controller.dataDirectory + "-wrong.token"
            try wrong.write(toFile: wrongFile, atomically: true, encoding: .utf8)
            let impostor = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", wrongFile,
                ],
                waitFor: ["admin"]
            )
            sidecars.append(impostor)
            #expect(try await impostor.waitForLog("is not the one the join token names"), "\(impostor.log)")
            for _ in 0..<100 where impostor.process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
            #expect(!impostor.process.isRunning)
            try? FileManager.default.removeItem(atPath: wrongFile)

            // ctl verifies it too: with the CA file it works, without it the handshake fails.
            let listed = try await Command.run([
                CLITests.binary, "ctl", "services", "--controller", controller.url, "--ca-file", controller.caFile,
            ])
            #expect(listed.exitCode == 0 && listed.output.contains("orders"), "\(listed.output)")
            let unverified = try await Command.run([
                CLITests.binary, "ctl", "services", "--controller", controller.url, "--ca-file",
                TestMesh.cert("mesh-ca"),
            ])
            #expect(unverified.exitCode != 0 && unverified.output.contains("cannot reach"), "\(unverified.output)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }
}

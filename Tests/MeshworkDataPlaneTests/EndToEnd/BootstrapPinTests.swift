import Foundation
import MeshworkDemo
import Testing

/// The join-token bootstrap cannot be intercepted: of the trust bundle fetched over the
/// first, unverified connection only the root the token pins is trusted. An impostor that
/// serves the real root beside its own, and presents a certificate from its own, gets the
/// bundle request and a failed handshake: never the token, never the CSR.
@Suite("Join-token bootstrap end to end", .serialized)
struct BootstrapPinTests {
    @Test func anImpostorServingTheRealRootBesideItsOwnNeverGetsTheTokenOrTheCSR() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start(defaultTLS: true)
        let directory = controller.dataDirectory + "-impostor"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let orders = try await TestMesh.startApp("orders-1")
        var impostor: FixtureServer?
        var sidecars: [SidecarProcess] = []
        do {
            // The impostor's certificate: from its own CA, for 127.0.0.1.
            let key = directory + "/impostor.key"
            let cert = directory + "/impostor.pem"
            let csr = directory + "/impostor.csr"
            let extensions = directory + "/ext.cnf"
            try "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                .write(toFile: extensions, atomically: true, encoding: .utf8)
            for command in [
                [
                    "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", "/CN=impostor",
                ],
                [
                    "openssl", "x509", "-req", "-in", csr, "-CA", TestMesh.cert("other-ca"), "-CAkey",
                    TestMesh.key("other-ca"), "-CAcreateserial", "-CAserial", directory + "/ca.srl", "-days", "1",
                    "-out", cert, "-extfile", extensions,
                ],
            ] {
                let result = try await Command.run(command)
                try #require(result.exitCode == 0, "\(result.output)")
            }
            // Its bundle: the real mesh root (which the token pins) and its own.
            let bundle = directory + "/bundle.pem"
            let realRoot = try String(contentsOfFile: controller.caFile, encoding: .utf8)
            let ownRoot = try String(contentsOfFile: TestMesh.cert("other-ca"), encoding: .utf8)
            try (realRoot + "\n" + ownRoot).write(toFile: bundle, atomically: true, encoding: .utf8)
            let record = directory + "/record.jsonl"
            _ = FileManager.default.createFile(atPath: record, contents: nil)
            let fake = try await FixtureServer.start("fake_controller.py", [cert, key, bundle, record])
            impostor = fake

            let tokenFile = try await controller.joinTokenFile("orders")
            let victim = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller",
                    "https://127.0.0.1:\(fake.port("api"))", "--join-token-file", tokenFile,
                ],
                waitFor: []
            )
            sidecars.append(victim)
            // Bounded (10 s): until the sidecar has fetched the bundle and tried to go on.
            func events() -> [[String: Any]] {
                let text = (try? String(contentsOfFile: record, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
            }
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline,
                !events().contains(where: { $0["event"] as? String == "handshake-failed" })
                    && !events().contains(where: { $0["method"] as? String == "POST" })
            {
                try await Task.sleep(for: .milliseconds(50))
            }
            let seen = events()
            #expect(
                seen.contains { $0["path"] as? String == "/v1/trust-bundle" },
                "the sidecar never fetched the bundle: \(seen) \(victim.log)"
            )
            #expect(
                seen.contains { $0["event"] as? String == "handshake-failed" },
                "the sidecar accepted the impostor's certificate: \(seen)"
            )
            #expect(!seen.contains { $0["method"] as? String == "POST" }, "a request went past the bundle: \(seen)")
            #expect(!seen.contains { $0["token"] as? Bool == true }, "the impostor got the token: \(seen)")
            #expect(!seen.contains { $0["csr"] as? Bool == true }, "the impostor got the CSR: \(seen)")
            #expect(!victim.log.contains("workload certificate issued"), "\(victim.log)")
            await victim.stop()
            sidecars.removeAll()

            // The token was never spent: the same file joins the real controller.
            let joined = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", tokenFile, "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(joined)
            #expect(try await joined.waitForLog("registered"), "\(joined.log)")
        } catch {
            for sidecar in sidecars { await sidecar.stop() }
            await impostor?.stop()
            await orders.stop()
            await controller.stop()
            controller.remove()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        for sidecar in sidecars { await sidecar.stop() }
        await impostor?.stop()
        await orders.stop()
        await controller.stop()
        controller.remove()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

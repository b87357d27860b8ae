import Foundation
import MeshworkDemo
import MeshworkModel
import Testing

/// The sidecar's admin listener and the controller's tap are no open door (issue 16, item
/// 5): `/config` and `/tap` need the admin token or the controller's certificate over
/// mTLS; the controller's `/v1/tap` needs an operator token and only reaches an admin
/// address on the instance's own host.
@Suite("Admin and tap access", .serialized)
struct AdminAccessTests {
    @Test func sidecarConfigAndTapNeedTheAdminTokenOrTheControllersCertificate() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-admin"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let tokenFile = directory + "/admin-token"
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        var ctls: [BackgroundCtl] = []
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            let server = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: ["--admin-token-file", tokenFile]
            )
            sidecars.append(server)
            let admin = "127.0.0.1:\(server.port("admin") ?? 0)"

            // The token was created for this sidecar: 256 random bits, owner-only.
            let token = try String(contentsOfFile: tokenFile, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(token.count == 64 && token.allSatisfy(\.isHexDigit), "\(token)")
            let mode = try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions] as? Int
            #expect(mode == 0o600)

            // Probes and scrapers need nothing.
            #expect(try await Curl.get("http://\(admin)/metrics").status == 200)
            #expect(try await Curl.get("http://\(admin)/ready").status == 200)
            #expect(try await Curl.get("http://\(admin)/live").status == 200)

            // The effective config and the tap: 401 without the token or with another.
            for path in ["/config", "/tap?limit=1"] {
                let none = try await Curl.get("http://\(admin)\(path)")
                #expect(none.status == 401 && none.text.contains("admin token"), "\(path): \(none.text)")
                let wrong = try await Curl.run([
                    "-H", "Authorization: Bearer \(String(token.reversed()))", "http://\(admin)\(path)",
                ])
                #expect(wrong.status == 401, "\(path)")
                let short = try await Curl.run([
                    "-H", "Authorization: Bearer \(token.prefix(63))", "http://\(admin)\(path)",
                ])
                #expect(short.status == 401, "\(path)")
            }
            let config = try await Curl.run(["-H", "Authorization: Bearer \(token)", "http://\(admin)/config"])
            #expect(config.status == 200 && config.text.contains("\"service\" : \"orders\""), "\(config.text)")

            // Over TLS only the controller's certificate is let in: no client certificate,
            // or another workload's (a valid one from the same CA), fails the handshake.
            let bare = try await Curl.run(["-k", "https://\(admin)/config"])
            #expect(bare.status == 0 && bare.exitCode != 0, "\(bare.stderr)")
            let web = try await controller.issueWorkload("web", in: directory)
            let other = try await Curl.run([
                "-k", "--cert", web.certificate, "--key", web.key, "https://\(admin)/config",
            ])
            #expect(other.status == 0 && other.exitCode != 0, "\(other.text) \(other.stderr)")

            // The controller's certificate opens the tap: ctl tap through it sees a request.
            let tap = try BackgroundCtl([
                "tap", "orders", "--limit", "1", "-o", "json", "--controller", controller.url,
                "--token-file", controller.dataDirectory + "/token",
            ])
            ctls.append(tap)
            try #require(try await tap.wait { $0.errors.contains("tapping 1 instance(s) of orders") }, "\(tap.errors)")
            let client = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(client)
            #expect(try await client.waitUntilServing("orders"))
            #expect(try await tap.wait { !$0.process.isRunning }, "\(tap.output) \(tap.errors)")
            #expect(tap.output.contains("\"target\":\"orders\""), "\(tap.output)")
        } catch {
            Issue.record("\(error)")
        }
        for ctl in ctls { await ctl.stop() }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }

    @Test func aSidecarWithoutAnAdminTokenServesConfigToNobodyButTheController() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        defer { controller.remove() }
        do {
            let server = try await startServer("orders", app: orders, controller: controller)
            let config = try await Curl.get("http://127.0.0.1:\(server.port("admin") ?? 0)/config")
            #expect(config.status == 401 && config.text.contains("controller's only"), "\(config.text)")
            await server.stop()
        } catch {
            Issue.record("\(error)")
        }
        await orders.stop()
        await controller.stop()
    }

    @Test func controllerTapNeedsAnOperatorTokenAndTheInstancesOwnAddress() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-admin"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            // An instance whose admin address points at another host (here: a name for the
            // controller's own API) is never connected to.
            let put = try await controller.call(
                "PUT",
                "/v1/instances/orders-rogue",
                body: #"""
                    {"service": "orders", "address": "127.0.0.1", "port": 9,
                     "metadata": {"meshwork.admin": "localhost:\#(controller.port)"}}
                    """#
            )
            #expect(put.status == 200, "\(put.text)")

            // Reads are open here (loopback), but a tap is not: no token, 401; a sidecar
            // credential, 403; an operator token, the tap (which refuses the address).
            #expect(try await controller.call("GET", "/v1/tap?service=orders", authorized: false).status == 401)
            let web = try await controller.issueWorkload("web", in: directory)
            let workload = try await controller.call("GET", "/v1/tap?service=orders", bearer: web.credential)
            #expect(workload.status == 403 && workload.text.contains("cannot tap"), "\(workload.text)")
            let tap = try await controller.call("GET", "/v1/tap?service=orders&limit=1")
            #expect(tap.status == 200, "\(tap.text)")
            let first = try JSONSerialization.jsonObject(with: Data((tap.text.split(separator: "\n").first ?? "").utf8))
            let failed = (first as? [String: Any])?["failed"] as? [String: String]
            #expect(failed?["orders-rogue"]?.contains("not on the instance's own address") == true, "\(tap.text)")
            #expect(((first as? [String: Any])?["tapping"] as? [String])?.isEmpty == true)
        } catch {
            Issue.record("\(error)")
        }
        await controller.stop()
    }

    @Test func onlyLocalhostAnd127Slash8AndIPv6LoopbackCountAsLoopback() throws {
        #expect(HostPort(host: "127.0.0.1", port: 7070).isLoopback)
        #expect(HostPort(host: "127.3.4.5", port: 7070).isLoopback)
        #expect(HostPort(host: "localhost", port: 7070).isLoopback)
        #expect(HostPort(host: "::1", port: 7070).isLoopback)
        #expect(!HostPort(host: "0.0.0.0", port: 7070).isLoopback)
        #expect(!HostPort(host: "::", port: 7070).isLoopback)
        #expect(!HostPort(host: "10.0.0.1", port: 7070).isLoopback)
        #expect(!HostPort(host: "127.0.0.1.example.com", port: 7070).isLoopback)
        #expect(!HostPort(host: "controller.internal", port: 7070).isLoopback)
    }

    @Test func protectAndPublicReadsExcludeEachOther() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mw-reads-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let result = try await Command.run([
            CLITests.binary, "controller", "--data-dir", directory, "--listen", "127.0.0.1:0", "--dns", "off",
            "--protect-reads", "--public-reads",
        ])
        #expect(result.exitCode != 0 && result.output.contains("exclude each other"), "\(result.output)")
    }
}

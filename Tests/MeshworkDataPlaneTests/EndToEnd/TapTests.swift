import Foundation
import MeshworkDemo
import Testing

/// A `meshwork ctl` process running in the background (tap, top), its stdout and stderr in
/// files.
final class BackgroundCtl {
    let process = Process()
    let stdout: String
    let stderr: String

    init(_ arguments: [String]) throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("mw-ctl-\(UUID().uuidString)").path
        stdout = base + ".out"
        stderr = base + ".err"
        _ = FileManager.default.createFile(atPath: stdout, contents: nil)
        _ = FileManager.default.createFile(atPath: stderr, contents: nil)
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = ["ctl"] + arguments
        process.standardOutput = FileHandle(forWritingAtPath: stdout)
        process.standardError = FileHandle(forWritingAtPath: stderr)
        try process.run()
    }

    var output: String { (try? String(contentsOfFile: stdout, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOfFile: stderr, encoding: .utf8)) ?? "" }

    /// Bounded wait for `condition` on the outputs.
    func wait(seconds: Int = 15, until condition: (BackgroundCtl) -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if condition(self) { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return condition(self)
    }

    func stop() async {
        await ControllerProcess.stop(process, kill: true, waitSteps: 500)
        try? FileManager.default.removeItem(atPath: stdout)
        try? FileManager.default.removeItem(atPath: stderr)
    }
}

/// `ctl tap` and `ctl top` against a running mesh: the controller opens taps on the
/// service's sidecars (their admin listeners, registered with the instance) and relays what
/// they see; the numbers printed match the requests sent.
@Suite("Tap and top end to end", .serialized)
struct TapTests {
    @Test func tapAndTopShowTheRequestsThatWereSent() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        var ctls: [BackgroundCtl] = []
        defer { controller.remove() }
        do {
            let adminToken = controller.dataDirectory + "-orders-admin-token"
            defer { try? FileManager.default.removeItem(atPath: adminToken) }
            let server = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: ["--admin-token-file", adminToken]
            )
            sidecars.append(server)
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            let base = web.upstreamURL("orders")
            let ready = try await web.waitUntilServing("orders")
            try #require(ready, "\(web.log)")
            // The instance carries its sidecar's admin address.
            let instances = try await controller.call("GET", "/v1/instances?service=orders").text
            #expect(
                instances.contains("\"meshwork.admin\" : \"127.0.0.1:\(server.port("admin") ?? 0)\""),
                "\(instances)"
            )

            // Everything orders receives: 10 slow GETs and 3 failing POSTs (not retried).
            let all = try BackgroundCtl([
                "tap", "orders", "--limit", "13", "-o", "json", "--controller", controller.url,
                "--token-file", controller.dataDirectory + "/token",
            ])
            ctls.append(all)
            try #require(try await all.wait { $0.errors.contains("tapping 1 instance(s) of orders") }, "\(all.errors)")
            for _ in 0..<10 { #expect(try await Curl.get(base + "/delay/5?secret=1").status == 200) }
            for _ in 0..<3 { #expect(try await Curl.run(["-X", "POST", base + "/status/500"]).status == 500) }
            #expect(try await all.wait { !$0.process.isRunning }, "tap did not stop at its limit: \(all.output)")
            let events = all.output.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            #expect(events.count == 13, "\(all.output)")
            let slow = events.filter { $0["path"] as? String == "/delay/5" }
            #expect(
                slow.count == 10 && slow.allSatisfy { $0["status"] as? Int == 200 && $0["method"] as? String == "GET" }
            )
            #expect(slow.allSatisfy { ($0["latencyMs"] as? Double ?? 0) >= 4.5 }, "\(slow)")
            #expect(events.allSatisfy { $0["source"] as? String == "web" && $0["target"] as? String == "orders" })
            #expect(events.allSatisfy { $0["direction"] as? String == "inbound" })
            #expect(events.filter { $0["status"] as? Int == 500 && $0["method"] as? String == "POST" }.count == 3)
            #expect(!all.output.contains("secret"), "query strings never leave the sidecar")

            // Filtered in the sidecar: only the failures, as a table.
            let failures = try BackgroundCtl([
                "tap", "orders", "--status", "5xx", "--limit", "2", "--controller", controller.url,
                "--token-file", controller.dataDirectory + "/token",
            ])
            ctls.append(failures)
            try #require(try await failures.wait { $0.errors.contains("tapping 1 instance(s)") }, "\(failures.errors)")
            for _ in 0..<3 { _ = try await Curl.get(base + "/") }
            for _ in 0..<2 { _ = try await Curl.run(["-X", "POST", base + "/status/503"]) }
            #expect(try await failures.wait { !$0.process.isRunning })
            let rows = failures.output.split(separator: "\n")
            #expect(rows.first?.hasPrefix("TIME") == true && rows.count == 3, "\(failures.output)")
            #expect(
                rows.dropFirst().allSatisfy { $0.contains("POST") && $0.contains("/status/503") && $0.contains("503") }
            )

            // ctl top: the busiest routes, counted.
            let top = try BackgroundCtl([
                "top", "orders", "--interval", "1", "--iterations", "8", "--controller", controller.url,
                "--token-file", controller.dataDirectory + "/token",
            ])
            ctls.append(top)
            try #require(try await top.wait { $0.output.contains("1 instance(s)") }, "\(top.output) \(top.errors)")
            for _ in 0..<20 { _ = try await Curl.get(base + "/delay/2") }
            for _ in 0..<4 { _ = try await Curl.get(base + "/status/404") }
            #expect(try await top.wait(seconds: 20) { !$0.process.isRunning })
            let lastFrame = top.output.components(separatedBy: "meshwork top orders").last ?? ""
            let delayRow = lastFrame.split(separator: "\n").first { $0.contains("/delay/2") }.map(String.init) ?? ""
            #expect(delayRow.split(separator: " ").contains("20") && delayRow.contains("100.00%"), "\(lastFrame)")
            let notFoundRow =
                lastFrame.split(separator: "\n").first { $0.contains("/status/404") }.map(String.init) ?? ""
            #expect(notFoundRow.split(separator: " ").contains("4") && notFoundRow.contains("web"), "\(lastFrame)")

            // Refusals: a bad filter names the parameter; a service nobody taps is a 404.
            let bad = try await Command.run(
                [
                    CLITests.binary, "ctl", "tap", "orders", "--status", "7xx", "--controller", controller.url,
                    "--token-file", controller.dataDirectory + "/token",
                ]
            )
            #expect(bad.exitCode != 0 && bad.output.contains("status: expected a class like 5xx"), "\(bad.output)")
            let unknown = try await Command.run(
                [
                    CLITests.binary, "ctl", "tap", "payments", "--controller", controller.url,
                    "--token-file", controller.dataDirectory + "/token",
                ]
            )
            #expect(unknown.exitCode != 0 && unknown.output.contains("404"), "\(unknown.output)")
            // The sidecar forgets the taps once their readers are gone (bounded: 10 s).
            let metricsURL = "http://127.0.0.1:\(server.port("admin") ?? 0)/metrics"
            func subscribers() async throws -> Int? {
                let text = try await Curl.get(metricsURL).text
                return text.split(separator: "\n").first { $0.hasPrefix("meshwork_tap_subscribers ") }
                    .flatMap { Int($0.split(separator: " ")[1]) }
            }
            #expect(try await subscribers() ?? 0 >= 1, "the first tap is still reading")
            for ctl in ctls { await ctl.stop() }
            ctls.removeAll()
            var left = try await subscribers()
            for _ in 0..<100 where left != 0 {
                try await Task.sleep(for: .milliseconds(100))
                left = try await subscribers()
            }
            #expect(left == 0, "taps left in the sidecar after every reader ended: \(String(describing: left))")
            // A bad filter is refused with the parameter named.
            let metrics = try await Curl.run([
                "-H",
                "Authorization: Bearer \(try String(contentsOfFile: adminToken, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))",
                "http://127.0.0.1:\(server.port("admin") ?? 0)/tap?status=9xx",
            ])
            #expect(metrics.status == 400 && metrics.text.contains("status"), "\(metrics.text)")
        } catch {
            Issue.record("\(error)")
        }
        for ctl in ctls { await ctl.stop() }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }
}

import Foundation
import MeshworkDemo
import Testing

/// Golden metrics end to end: known traffic through two sidecars on join tokens; the
/// numbers on the sidecars' /metrics (checked by promtool), the controller's windows, and
/// `ctl stat` / `ctl edges` match what was sent.
@Suite("Telemetry end to end", .serialized)
struct TelemetryTests {
    private func ctl(_ controller: ControllerProcess, _ arguments: [String]) async throws -> String {
        let result = try await Command.run(
            [CLITests.binary, "ctl"] + arguments + ["--controller", controller.url]
        )
        #expect(result.exitCode == 0, "ctl \(arguments): \(result.output)")
        return result.output
    }

    private func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    @Test func knownTrafficShowsUpInMetricsStatAndEdges() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            let server = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: ["--telemetry-interval", "300ms"]
            )
            sidecars.append(server)
            let client = try await SidecarProcess.start(
                [
                    "--service", "web", "--controller", controller.url, "--upstream", "orders=127.0.0.1:0",
                    "--join-token-file", try await controller.joinTokenFile("web"),
                ],
                waitFor: ["upstream:orders"]
            )
            sidecars.append(client)
            let base = "http://127.0.0.1:\(client.port("upstream:orders") ?? 0)"
            // Bounded: until discovery and certificates let the first call through.
            var ready = false
            for _ in 0..<100 where !ready {
                ready = try await Curl.get(base + "/").status == 200
                if !ready { try await Task.sleep(for: .milliseconds(100)) }
            }
            try #require(ready, "\(client.log)")

            // 100 successes of about 20 ms, 20 failures (POST: not retried), plus the first call.
            for _ in 0..<100 {
                #expect(try await Curl.get(base + "/delay/20").status == 200)
            }
            for _ in 0..<20 {
                #expect(try await Curl.run(["-X", "POST", base + "/status/500"]).status == 500)
            }

            // One the mesh answers itself: a head over the limit, refused by web's sidecar.
            let big = try await Curl.run(["-H", "x-big: " + String(repeating: "a", count: 100_000), base + "/"])
            #expect(big.status == 431)

            // The sidecars' own metrics, per edge, and promtool is happy with them.
            let serverMetrics = try await Curl.get("http://127.0.0.1:\(server.port("admin") ?? 0)/metrics").text
            #expect(
                serverMetrics.contains(#"meshwork_edge_requests_total{direction="inbound",peer="web",class="2xx"} 101"#)
            )
            #expect(
                serverMetrics.contains(#"meshwork_edge_requests_total{direction="inbound",peer="web",class="5xx"} 20"#)
            )
            // Body bytes: "hello from orders-1\n", 100 x "slept 20ms\n", 20 x "status 500\n".
            #expect(
                serverMetrics.contains(#"meshwork_edge_response_bytes_total{direction="inbound",peer="web"} 1340"#),
                "\(serverMetrics)"
            )
            let clientMetrics = try await Curl.get("http://127.0.0.1:\(client.port("admin") ?? 0)/metrics").text
            #expect(
                clientMetrics.contains(
                    #"meshwork_edge_mesh_errors_total{direction="outbound",peer="unrouted",reason="header_too_large"} 1"#
                ),
                "\(clientMetrics)"
            )
            #expect(
                clientMetrics.contains(
                    #"meshwork_edge_requests_total{direction="outbound",peer="orders",class="2xx"} 101"#
                )
            )
            for text in [serverMetrics, clientMetrics] {
                let file = controller.dataDirectory + "-metrics.txt"
                try text.write(toFile: file, atomically: true, encoding: .utf8)
                let check = try await Command.run(["sh", "-c", "promtool check metrics < \(file)"])
                #expect(check.exitCode == 0, "promtool: \(check.output)")
                try? FileManager.default.removeItem(atPath: file)
            }

            // The controller's window (bounded wait for the reports).
            var services: [[String: Any]] = []
            for _ in 0..<100 {
                let stat = json(try await ctl(controller, ["stat", "--window", "1m", "-o", "json"]))
                services = stat["services"] as? [[String: Any]] ?? []
                let requests = (services.first?["metrics"] as? [String: Any])?["requests"] as? Int
                if requests == 121 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let ordersStats = try #require(services.first { $0["service"] as? String == "orders" }, "\(services)")
            let metrics = try #require(ordersStats["metrics"] as? [String: Any])
            #expect(metrics["requests"] as? Int == 121)
            #expect(metrics["failures"] as? Int == 20)
            let success = try #require(metrics["successRate"] as? Double)
            #expect(abs(success - 101.0 / 121.0) < 1e-9)
            let p50 = try #require(metrics["p50Ms"] as? Double)
            // At least the app's 20 ms (the histogram keeps two significant digits); the upper
            // bound only guards against nonsense on a loaded machine.
            #expect(p50 >= 19.5 && p50 < 200, "p50 \(p50)")
            #expect((metrics["rps"] as? Double ?? 0) > 0)

            // Per instance, and the table.
            let perInstance = try await ctl(controller, ["stat", "orders"])
            #expect(perInstance.contains("orders-127-0-0-1-"), "\(perInstance)")
            #expect(perInstance.contains("121") && perInstance.contains("83.47%"), "\(perInstance)")

            // The edge: web -> orders, authenticated by mTLS.
            let edges = json(try await ctl(controller, ["edges", "-o", "json"]))["edges"] as? [[String: Any]] ?? []
            let edge = try #require(edges.first { $0["source"] as? String == "web" }, "\(edges)")
            #expect(edge["target"] as? String == "orders" && edge["mtls"] as? Bool == true)
            #expect((edge["metrics"] as? [String: Any])?["requests"] as? Int == 121)
            let table = try await ctl(controller, ["edges"])
            #expect(table.contains("SOURCE") && table.contains("web") && table.contains("yes"), "\(table)")

            // A bad report is refused with the field, and counted.
            let instanceID = try #require((ordersStats["instances"] as? [[String: Any]])?.first?["instance"] as? String)
            let bad = try await controller.call(
                "POST",
                "/v1/instances/\(instanceID)/telemetry",
                body: #"{"service": "payments", "seconds": 1, "edges": []}"#
            )
            #expect(bad.status == 400 && bad.text.contains("\"field\":\"service\""), "\(bad.text)")
            #expect(try await controller.call("GET", "/v1/stats?window=1h").status == 400)
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }
}

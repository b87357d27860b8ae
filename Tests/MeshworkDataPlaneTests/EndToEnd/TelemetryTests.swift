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

    /// What one sidecar credential reports is bounded (issue 16, item 10): counts no
    /// sidecar could have are refused with the field, an instance reporting faster than 10
    /// a second beyond a burst of 20 gets 429, and one instance keeps at most 256 peers
    /// (more are dropped and counted), while another instance's report is still taken.
    @Test func telemetryReportsAreBoundedPerInstanceAndCannotStarveOthers() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let directory = controller.dataDirectory + "-flood"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            controller.remove()
        }
        do {
            var credentials: [String: String] = [:]
            for (service, instance) in [("orders", "orders-a"), ("billing", "billing-a")] {
                let issued = try await controller.issueWorkload(service, in: directory, instance: instance)
                credentials[instance] = issued.credential
                let put = try await controller.call(
                    "PUT",
                    "/v1/instances/\(instance)",
                    body: #"{"service": "\#(service)", "address": "127.0.0.1", "port": 9001, "ttlSeconds": 600}"#,
                    bearer: issued.credential
                )
                #expect(put.status == 200, "\(put.text)")
            }
            func flood(_ instance: String, _ service: String, _ arguments: [String]) async throws -> [String: Any] {
                let result = try await Command.run(
                    [
                        "timeout", "60", "python3", "\(TestMesh.clients)/telemetry_flood.py", String(controller.port),
                        instance, service, credentials[instance] ?? "",
                    ] + arguments
                )
                return json(result.output)
            }

            let huge = try await flood("orders-a", "orders", ["huge"])
            #expect(huge["status"] as? Int == 400, "\(huge)")
            #expect((huge["body"] as? String)?.contains("edges[0].classes") == true, "\(huge)")

            let burst = try await flood("orders-a", "orders", ["burst", "60"])
            let statuses = burst["statuses"] as? [String: Int] ?? [:]
            let seconds = burst["seconds"] as? Double ?? 99
            #expect((statuses["429"] ?? 0) > 0, "\(burst)")
            #expect((statuses["204"] ?? 0) >= 20, "\(burst)")
            #expect(Double(statuses["204"] ?? 0) <= 20 + 10 * (seconds + 1), "\(burst)")
            #expect(
                try await controller.metric(#"meshwork_controller_api_refusals_total{reason="telemetry_rate_limited"}"#)
                    > 0
            )

            // The quota: 255 more peers fill orders-a's 256 ("web" came first); ten more
            // are dropped. (The fixture sends each report again until the rate limit,
            // spent by the burst, has refilled: a refused report changes nothing.)
            let filled = try await flood("orders-a", "orders", ["peers", "0", "255"])
            #expect(filled["status"] as? Int == 204, "\(filled)")
            let over = try await flood("orders-a", "orders", ["peers", "255", "10"])
            #expect(over["status"] as? Int == 204, "\(over)")
            #expect(
                try await controller.metric(#"meshwork_controller_api_refusals_total{reason="telemetry_series_quota"}"#)
                    == 1
            )
            let other = try await flood("billing-a", "billing", ["peers", "1000", "3"])
            #expect(other["status"] as? Int == 204, "\(other)")

            let edges = try await controller.call("GET", "/v1/edges").text
            let rows = (json(edges)["edges"] as? [[String: Any]]) ?? []
            let sources = Set(
                rows.compactMap { row in
                    (row["target"] as? String).flatMap { "\($0)<-\(row["source"] as? String ?? "")" }
                }
            )
            #expect(
                sources.contains("orders<-web") && sources.contains("orders<-p0") && sources.contains("orders<-p254")
            )
            #expect(!sources.contains("orders<-p255") && !sources.contains("orders<-p264"), "\(sources.count)")
            #expect(
                sources.contains("billing<-p1000") && sources.contains("billing<-p1002"),
                "\(sources.sorted().suffix(5))"
            )
        } catch {
            Issue.record("\(error)")
        }
        await controller.stop()
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

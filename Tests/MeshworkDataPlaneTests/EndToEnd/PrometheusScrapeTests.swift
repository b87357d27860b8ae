import Foundation
import MeshworkDemo
import Testing

/// A real Prometheus server (Debian's `prometheus`) scrapes a sidecar's admin `/metrics`
/// with the scrape config docs/telemetry.md gives, and answers a PromQL query over the
/// per-edge series with the traffic that was sent.
@Suite("Prometheus scrape end to end", .serialized)
struct PrometheusScrapeTests {
    @Test func prometheusScrapesTheSidecarAndQueriesItsEdges() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/prometheus"), "scripts/test installs it")
        let (server, client) = try await TestMesh.startPair()
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("mw-prom-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let prometheus = Process()
        do {
            for _ in 0..<25 { #expect(try await Curl.get(client.url("upstream:orders")).status == 200) }
            let admin = client.port("admin")
            try #require(admin != 0)
            // A port the kernel picked, released for Prometheus to bind.
            let port = try RefusingPort().port
            try """
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: meshwork-sidecars
                static_configs:
                  - targets: ["127.0.0.1:\(admin)"]
            """.write(toFile: work + "/prometheus.yml", atomically: true, encoding: .utf8)
            prometheus.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
            prometheus.arguments = [
                "--config.file=\(work)/prometheus.yml", "--storage.tsdb.path=\(work)/data",
                "--web.listen-address=127.0.0.1:\(port)",
            ]
            prometheus.standardOutput = FileHandle.nullDevice
            prometheus.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try prometheus.run()
            // Bounded: until a scrape has landed and the query sees the 25 calls.
            let query =
                "http://127.0.0.1:\(port)/api/v1/query?query="
                + "sum(meshwork_edge_requests_total%7Bdirection%3D%22outbound%22%2Cpeer%3D%22orders%22%7D)"
            var value = ""
            for _ in 0..<150 {
                let answer = try await Curl.get(query)
                if answer.status == 200,
                    let object = try? JSONSerialization.jsonObject(with: Data(answer.text.utf8)) as? [String: Any],
                    let data = object["data"] as? [String: Any],
                    let result = (data["result"] as? [[String: Any]])?.first,
                    let pair = result["value"] as? [Any], let text = pair.last as? String
                {
                    value = text
                    if value == "25" { break }
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(value == "25", "Prometheus saw \(value)")
            let targets = try await Curl.get("http://127.0.0.1:\(port)/api/v1/targets").text
            #expect(targets.contains("\"health\":\"up\""), "\(targets)")
        } catch {
            Issue.record("\(error)")
        }
        if prometheus.isRunning { await ControllerProcess.stop(prometheus, kill: true, waitSteps: 500) }
        try? FileManager.default.removeItem(atPath: work)
        await client.stop()
        await server.sidecar.stop()
        await server.app.stop()
    }
}

import Foundation
import MeshworkDemo
import Testing

/// The controller's dashboard in a real browser: headless Chromium loads `/ui` from a
/// controller of a running mesh (web -> orders over mTLS, with traffic), runs its script
/// against the live API, and the rendered DOM shows the topology edge, the services with
/// their golden metrics, and the instances with health and certificate expiry; the page
/// logged no error.
@Suite("Dashboard end to end", .serialized)
struct DashboardTests {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test func pageShowsTheRunningMeshWithoutConsoleErrors() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let browser = try #require(Self.chromium, "chromium is not installed (scripts/test installs it)")
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            sidecars.append(
                try await startServer(
                    "orders",
                    app: orders,
                    controller: controller,
                    extra: ["--telemetry-interval", "300ms"]
                )
            )
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            let base = web.upstreamURL("orders")
            let ready = try await web.waitUntilServing("orders")
            try #require(ready, "\(web.log)")
            for _ in 0..<30 { _ = try await Curl.get(base + "/") }
            // Bounded: until the controller's window has the traffic.
            for _ in 0..<100 {
                if try await controller.call("GET", "/v1/edges").text.contains("\"web\"") { break }
                try await Task.sleep(for: .milliseconds(100))
            }

            // A route of orders, for the page's routes table.
            let applied = try await controller.apply(
                """
                kind: HTTPRoute
                name: orders-beta
                parentRefs: [{name: orders}]
                rules:
                  - name: beta
                    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-beta, value: "1"}]}]
                    filters: [{type: Fault, fault: {delay: {fixedDelay: 1ms, percent: 1}}}]
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            // And a rollout of it, for the rollouts table (after the traffic: it moves orders'
            // callers to versions this test's instance does not have).
            let rollout = try await controller.apply(
                "kind: Rollout\nname: orders-v2\nservice: orders\nstable: v1\ncanary: v2\nsteps: [{setWeight: 10}, {pause: {}}]"
            )
            #expect(rollout.exitCode == 0, "\(rollout.output)")
            // One in an analysis, for its figures against the step's thresholds (no v2 of web
            // serves: no requests, inconclusive, held).
            let analysed = try await controller.apply(
                "kind: Rollout\nname: web-v2\nservice: web\nstable: v1\ncanary: v2\ninconclusiveLimit: 100\n"
                    + "steps: [{setWeight: 0}, {analysis: {successRate: 99, interval: 1s, minRequests: 5}}]"
            )
            #expect(analysed.exitCode == 0, "\(analysed.output)")
            #expect(
                try await eventually {
                    try await controller.call("GET", "/v1/rollouts/web-v2").text.contains("\"figures\"")
                }
            )

            // The page itself: served from the binary, no external asset.
            let page = try await Curl.get(controller.url + "/ui")
            #expect(page.status == 200 && page.text.contains("<svg id=\"topology\""))
            // No asset from anywhere else: no src/href to another origin, no CSS url() or
            // @import of one (the SVG namespace URI is a name, not a fetch).
            let external = try NSRegularExpression(
                pattern: #"(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import"#,
                options: [.caseInsensitive]
            )
            let range = NSRange(page.text.startIndex..., in: page.text)
            let found = external.matches(in: page.text, range: range).map {
                (page.text as NSString).substring(with: $0.range)
            }
            #expect(found.isEmpty, "external assets: \(found)")
            #expect(!page.text.contains("<script src"), "scripts are inline")
            #expect(try await controller.call("GET", "/v1/stats/series?window=10m").text.contains("\"points\""))
            #expect(try await controller.call("GET", "/v1/certificates").text.contains("orders-127-0-0-1-"))

            let profile = controller.dataDirectory + "-chromium"
            let output = controller.dataDirectory + "-dom.html"
            // Bounded (60 s); the output goes to a file (a DOM can outgrow a pipe's buffer).
            let result = try await Command.run([
                "sh", "-c",
                "timeout 60 \(browser) --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run"
                    + " --user-data-dir=\(profile) --enable-logging=stderr --v=0 --virtual-time-budget=6000"
                    + " --dump-dom \(controller.url)/ui > \(output) 2> \(output).err",
            ])
            let dom = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            let log = (try? String(contentsOfFile: output + ".err", encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: profile)
            try? FileManager.default.removeItem(atPath: output)
            try? FileManager.default.removeItem(atPath: output + ".err")
            #expect(result.exitCode == 0, "chromium: \(log.suffix(2000))")
            #expect(dom.contains("data-ready=\"1\""), "the page never rendered the API's data: \(dom.suffix(3000))")
            #expect(!dom.contains("data-errors="), "page errors: \(dom)")
            // Chromium logs what the page writes to its console as CONSOLE lines on stderr.
            for line in log.split(separator: "\n") where line.contains("CONSOLE") {
                Issue.record("console: \(line)")
            }
            // Topology: both services as nodes, the edge between them with its rate.
            #expect(dom.contains(#"data-service="orders""#) && dom.contains(#"data-service="web""#))
            #expect(dom.contains(#"class="edge" data-source="web" data-target="orders""#), "\(dom.suffix(3000))")
            #expect(dom.contains("rps · 100%"), "\(dom.suffix(3000))")
            // Services, edges and instances tables.
            #expect(dom.contains("1 / 1 healthy"))
            #expect(dom.contains(#"<td class="ok">yes</td>"#), "mTLS column")
            #expect(dom.contains("data-instance=\"orders-127-0-0-1-"))
            #expect(dom.contains("badge ok\">healthy"))
            #expect(dom.contains(#"<td class="expiry">in "#), "certificate expiry: \(dom.suffix(2000))")
            // Routes per service: the rule, its matches and filters, and the route's status.
            #expect(dom.contains(#"<tr data-route="orders-beta" data-service="orders">"#), "\(dom.suffix(3000))")
            #expect(dom.contains("PathPrefix /api · x-beta=1") && dom.contains("<td>Fault</td>"), "\(dom.suffix(3000))")
            #expect(dom.contains(#"<td class="ok">Accepted</td>"#), "\(dom.suffix(3000))")
            // Rollouts: where each is and the weights it sets.
            #expect(dom.contains(#"<tr data-rollout="orders-v2" data-phase="Paused">"#), "\(dom.suffix(3000))")
            #expect(dom.contains("<td>orders v1 → v2</td>") && dom.contains("<td>2 of 2</td>"), "\(dom.suffix(3000))")
            #expect(dom.contains("<td>v1 90% · v2 10%</td>"), "\(dom.suffix(3000))")
            #expect(dom.contains(#"<tr data-rollout="web-v2" data-phase="Progressing">"#), "\(dom.suffix(3000))")
            #expect(dom.contains("<td>0 req · success – (≥ 99%) · p99 –</td>"), "\(dom.suffix(3000))")
            #expect(dom.contains("inconclusive"), "the analysis says why it holds: \(dom.suffix(3000))")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
    }
}

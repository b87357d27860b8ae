import AsyncHTTPClient
import Foundation
import MeshworkDemo
import Testing

/// An OTLP/HTTP receiver (Python, opentelemetry-proto's own decoder) in a child process: the
/// spans it decoded, one JSON object per line of its output.
final class OTLPReceiver {
    let process = Process()
    let output: String
    private(set) var port = 0

    init() throws {
        output = FileManager.default.temporaryDirectory.appendingPathComponent("mw-otlp-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "\(TestMesh.clients)/otlp_receiver.py"]
        process.standardOutput = FileHandle(forWritingAtPath: output)
        process.standardError = FileHandle(forWritingAtPath: output)
    }

    static func start() async throws -> OTLPReceiver {
        let receiver = try OTLPReceiver()
        try receiver.process.run()
        for _ in 0..<200 {
            let text = (try? String(contentsOfFile: receiver.output, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first, line.hasPrefix("listening "),
                let port = Int(line.dropFirst("listening ".count))
            {
                receiver.port = port
                return receiver
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        await ControllerProcess.stop(receiver.process, kill: true, waitSteps: 500)
        throw ControllerStartFailure(log: (try? String(contentsOfFile: receiver.output, encoding: .utf8)) ?? "")
    }

    var endpoint: String { "http://127.0.0.1:\(port)/v1/traces" }

    var lines: [[String: Any]] {
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").dropFirst().compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    func spans(trace: String) -> [[String: Any]] {
        lines.filter { $0["traceId"] as? String == trace }
    }

    /// SIGKILL: Python's HTTP server inherits the test process's signal dispositions, and
    /// may not die on SIGTERM.
    func stop() async {
        await ControllerProcess.stop(process, kill: true, waitSteps: 500)
        try? FileManager.default.removeItem(atPath: output)
    }
}

/// Tracing end to end: web -> orders -> inventory, a sidecar beside each (mTLS on join
/// tokens), the orders app passing the trace context on as apps do. Every sidecar exports
/// its spans over OTLP/HTTP to a receiver that decodes them with the OpenTelemetry protobuf
/// definitions; the test follows the parent/child links across both hops.
@Suite("Tracing end to end", .serialized)
struct TracingTests {
    @Test func spansLinkAcrossTwoHopsAndAccessLogsCarryTheTrace() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let receiver = try await OTLPReceiver.start()
        let controller = try await ControllerProcess.start()
        let inventory = try await TestMesh.startApp("inventory-1")
        let orders = try await TestMesh.startApp("orders-1")
        let http = HTTPClient(eventLoopGroupProvider: .shared(TestMesh.group))
        let accessLog = controller.dataDirectory + "-access.log"
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            let tracing = ["--trace-endpoint", receiver.endpoint, "--trace-sample-rate", "1"]
            sidecars.append(try await startServer("inventory", app: inventory, controller: controller, extra: tracing))
            let ordersSidecar = try await startServer(
                "orders",
                app: orders,
                controller: controller,
                extra: tracing + ["--upstream", "inventory=127.0.0.1:0", "--access-log", accessLog]
            )
            sidecars.append(ordersSidecar)
            orders.setDownstream(port: try #require(ordersSidecar.port("upstream:inventory")), client: http)
            let web = try await SidecarProcess.start(
                [
                    "--service", "web", "--controller", controller.url, "--upstream", "orders=127.0.0.1:0",
                    "--join-token-file", try await controller.joinTokenFile("web"),
                    "--trace-endpoint", receiver.endpoint, "--trace-sample-rate", "0",
                ],
                waitFor: ["upstream:orders"]
            )
            sidecars.append(web)
            let base = "http://127.0.0.1:\(web.port("upstream:orders") ?? 0)"
            // Bounded: until discovery and certificates let a whole chain through.
            var ready = false
            for _ in 0..<100 where !ready {
                ready = try await Curl.get(base + "/").text.contains("orders-1 -> hello from inventory-1")
                if !ready { try await Task.sleep(for: .milliseconds(100)) }
            }
            try #require(ready, "\(web.log)")

            // A caller that decided not to sample: nobody records it (web samples nothing
            // of its own either, at rate 0).
            let unsampledTrace = "0af7651916cd43dd8448eb211c80319d"
            let unsampled = try await Curl.run(
                ["-H", "traceparent: 00-\(unsampledTrace)-b7ad6b7169203331-00", base + "/"]
            )
            #expect(unsampled.status == 200)

            // A sampled caller's trace: four spans, each the child of the one before.
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
            let callerSpan = "00f067aa0ba902b7"
            let sampled = try await Curl.run([
                "-H", "traceparent: 00-\(trace)-\(callerSpan)-01", "-H", "tracestate: vendor=opaque", base + "/",
            ])
            #expect(sampled.status == 200 && sampled.text.contains("inventory-1"), "\(sampled.text)")

            var spans: [[String: Any]] = []
            for _ in 0..<100 {  // exports every 2 s: bounded wait for all four
                spans = receiver.spans(trace: trace)
                if spans.count >= 4 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(!receiver.lines.contains { $0["error"] != nil }, "\(receiver.lines)")
            try #require(spans.count == 4, "\(receiver.lines)")
            func span(_ service: String, kind: Int) throws -> [String: Any] {
                try #require(
                    spans.first { $0["service"] as? String == service && $0["kind"] as? Int == kind },
                    "\(service) kind \(kind) in \(spans)"
                )
            }
            let webClient = try span("web", kind: 3)
            let ordersServer = try span("orders", kind: 2)
            let ordersClient = try span("orders", kind: 3)
            let inventoryServer = try span("inventory", kind: 2)
            #expect(webClient["parentSpanId"] as? String == callerSpan)
            #expect(ordersServer["parentSpanId"] as? String == webClient["spanId"] as? String)
            #expect(ordersClient["parentSpanId"] as? String == ordersServer["spanId"] as? String)
            #expect(inventoryServer["parentSpanId"] as? String == ordersClient["spanId"] as? String)
            #expect(Set(spans.compactMap { $0["spanId"] as? String }).count == 4)
            #expect(webClient["name"] as? String == "GET orders")
            let attributes = try #require(inventoryServer["attributes"] as? [String: Any])
            #expect(attributes["http.response.status_code"] as? Int == 200)
            #expect(attributes["meshwork.source"] as? String == "orders")
            #expect(attributes["url.path"] as? String == "/")
            // A child starts no earlier than its parent and ends no later (one machine's clock).
            for (parent, child) in [(webClient, ordersServer), (ordersServer, ordersClient)] {
                let (ps, pe) = (parent["start"] as? Int ?? 0, parent["end"] as? Int ?? 0)
                let (cs, ce) = (child["start"] as? Int ?? 0, child["end"] as? Int ?? 0)
                #expect(ps <= cs && ce <= pe, "\(parent) \(child)")
            }
            #expect(receiver.spans(trace: unsampledTrace).isEmpty)

            // Without a trace context and at rate 0, web starts an unsampled trace: the
            // downstream sidecars honour the decision, so nothing new is recorded for it.
            let before = receiver.lines.count
            #expect(try await Curl.get(base + "/").status == 200)

            // A 5xx from the app marks both spans as errors (a POST: not retried).
            let failing = try await Curl.run([
                "-X", "POST", "-H",
                "traceparent: 00-\(trace.replacingOccurrences(of: "4bf", with: "5bf"))-\(callerSpan)-01",
                base + "/status/500",
            ])
            #expect(failing.status == 500)
            var errorSpans: [[String: Any]] = []
            for _ in 0..<100 {
                errorSpans = receiver.spans(trace: trace.replacingOccurrences(of: "4bf", with: "5bf"))
                if errorSpans.count >= 2 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(errorSpans.count == 2 && errorSpans.allSatisfy { $0["status"] as? Int == 2 }, "\(errorSpans)")
            #expect(receiver.lines.count == before + 2, "the unsampled call left spans: \(receiver.lines)")

            // The orders sidecar's access log: one JSON line per exchange, with the trace.
            var entries: [[String: Any]] = []
            for _ in 0..<50 {
                let text = (try? String(contentsOfFile: accessLog, encoding: .utf8)) ?? ""
                entries = text.split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
                if entries.contains(where: {
                    $0["trace_id"] as? String == trace && $0["direction"] as? String == "outbound"
                }) {
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            let inbound = try #require(
                entries.first { $0["trace_id"] as? String == trace && $0["direction"] as? String == "inbound" },
                "\(entries)"
            )
            #expect(inbound["source"] as? String == "web" && inbound["target"] as? String == "orders")
            #expect(inbound["status"] as? Int == 200 && inbound["method"] as? String == "GET")
            #expect(inbound["span_id"] as? String == ordersServer["spanId"] as? String)
            #expect((inbound["time"] as? String)?.hasSuffix("Z") == true)
            let outbound = try #require(
                entries.first { $0["trace_id"] as? String == trace && $0["direction"] as? String == "outbound" }
            )
            #expect(outbound["target"] as? String == "inventory")
            #expect(entries.contains { $0["status"] as? Int == 500 && $0["path"] as? String == "/status/500" })
            let metrics = try await Curl.get("http://127.0.0.1:\(ordersSidecar.port("admin") ?? 0)/metrics").text
            #expect(metrics.contains("meshwork_access_log_dropped_bytes_total 0"), "\(metrics)")

            // A route on inventory, pushed to orders' sidecar: its client span names the rule
            // that decided the call (`meshwork.route`); the server spans do not.
            let updates = ordersSidecar.logCount("routes updated")
            let applied = try await controller.apply(
                """
                kind: HTTPRoute
                name: inventory-traced
                parentRefs: [{name: inventory}]
                rules:
                  - name: everything
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await ordersSidecar.waitForLog("routes updated", beyond: updates), "\(ordersSidecar.log)")
            let routedTrace = trace.replacingOccurrences(of: "4bf", with: "6bf")
            let routed = try await Curl.run(["-H", "traceparent: 00-\(routedTrace)-\(callerSpan)-01", base + "/"])
            #expect(routed.status == 200 && routed.text.contains("inventory-1"), "\(routed.text)")
            var routedSpans: [[String: Any]] = []
            for _ in 0..<100 {  // exports every 2 s: bounded wait for all four
                routedSpans = receiver.spans(trace: routedTrace)
                if routedSpans.count >= 4 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            try #require(routedSpans.count == 4, "\(routedSpans)")
            let named = routedSpans.filter { ($0["attributes"] as? [String: Any])?["meshwork.route"] != nil }
            #expect(named.count == 1, "\(routedSpans)")
            #expect(named.first?["service"] as? String == "orders" && named.first?["kind"] as? Int == 3, "\(named)")
            #expect(
                (named.first?["attributes"] as? [String: Any])?["meshwork.route"] as? String
                    == "inventory-traced/everything",
                "\(named)"
            )
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        try? await http.shutdown()
        await orders.stop()
        await inventory.stop()
        await controller.stop()
        await receiver.stop()
        try? FileManager.default.removeItem(atPath: accessLog)
    }
}

import Foundation
import MeshworkDemo
import Testing

/// A service's traffic policy pushed by the controller applies whole to a running caller's
/// sidecar (issue 17, item 1): timeouts, circuit breakers, retries and their budget,
/// adaptive throttling and outlier detection each change what the caller does, without a
/// restart. Before, a discovered cluster kept the breakers, budget and throttle of the
/// defaults it was created with, and its pools the timeouts.
@Suite("Pushed policy end to end", .serialized)
struct PolicyPushTests {
    private func metric(_ sidecar: SidecarProcess, _ series: String) async throws -> Double {
        let text = try await Curl.get("http://127.0.0.1:\(sidecar.port("admin") ?? 0)/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    private func push(_ controller: ControllerProcess, _ policy: String) async throws {
        let put = try await controller.call("PUT", "/v1/services/orders", body: #"{"policy": \#(policy)}"#)
        #expect(put.status == 200, "\(put.text)")
    }

    @Test func everyPartOfAPushedPolicyChangesARunningCaller() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let good = try await TestMesh.startApp("orders-1")
        let bad = try await TestMesh.startApp("orders-2")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            sidecars.append(try await startServer("orders", app: good, controller: controller))
            sidecars.append(try await startServer("orders", app: bad, controller: controller))
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")

            // Timeouts: a 300 ms request timeout cuts a 1 s answer.
            try await push(controller, #"{"requestTimeout": "300ms", "outlierDetection": "off"}"#)
            #expect(
                try await eventually {
                    let answer = try await Curl.get(url + "/delay/1000")
                    return answer.status == 504 && answer.header("x-meshwork-error") == "upstream_timeout"
                },
                "\(web.log)"
            )

            // Circuit breakers: one request in flight (the sidecar runs one event loop).
            try await push(controller, #"{"circuitBreakers": {"maxRequests": 1}, "outlierDetection": "off"}"#)
            #expect(
                try await eventually {
                    let (_, output) = try await Command.run([
                        "nghttp", "-v", "-n", "-t", "10", "-m", "3", url + "/delay/300",
                    ])
                    return output.contains("x-meshwork-error: overflow_requests")
                }
            )

            // Retries: with the defaults a failing instance's 503 is retried on the other;
            // pushed `attempts: 0`, it reaches the caller.
            bad.setFailing(503)
            try await push(controller, #"{"retries": {"attempts": 0}, "outlierDetection": "off"}"#)
            #expect(
                try await eventually {
                    try await Curl.get(url + "/").status == 503
                }
            )
            // The budget: retries allowed by attempts but by no budget are refused.
            try await push(
                controller,
                #"{"retries": {"attempts": 2, "budgetRatio": 0, "budgetMinPerSecond": 0}, "outlierDetection": "off"}"#
            )
            #expect(
                try await eventually {
                    _ = try await Curl.get(url + "/")
                    return try await metric(web, #"meshwork_cluster_retry_budget_exhausted_total{cluster="orders"}"#)
                        > 0
                },
                "\(web.log)"
            )

            // Adaptive throttling: most answers failing, the caller sheds some locally.
            try await push(
                controller,
                #"{"retries": "off", "adaptiveThrottling": {"k": 1.1, "window": "30s"}, "outlierDetection": "off"}"#
            )
            good.setFailing(503)
            #expect(
                try await eventually {
                    for _ in 0..<10 { _ = try await Curl.get(url + "/") }
                    return try await metric(web, #"meshwork_cluster_errors_total{cluster="orders",reason="throttled"}"#)
                        > 0
                },
                "\(web.log)"
            )
            good.setFailing(nil)

            // Outlier detection: pushed on, two 5xx in a row eject the failing instance.
            bad.setFailing(500)
            try await push(
                controller,
                #"{"retries": "off", "outlierDetection": {"consecutive5xx": 2, "interval": "1s"}}"#
            )
            #expect(
                try await eventually {
                    for _ in 0..<4 { _ = try await Curl.get(url + "/") }
                    return try await metric(
                        web,
                        #"meshwork_cluster_outlier_ejections_total{cluster="orders",reason="consecutive_5xx"}"#
                    ) > 0
                },
                "\(web.log)"
            )
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await good.stop()
        await bad.stop()
        await controller.stop()
    }
}

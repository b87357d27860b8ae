import Foundation
import MeshworkDemo
import Testing

/// Routes (issue 18) applied through the controller to a running caller's sidecar: matches
/// by header and path, weighted splits over version subsets, header changes both ways,
/// fault aborts, and removal; every change within one push, no restart.
@Suite("Routes end to end", .serialized)
struct RouteTests {
    /// `count` sequential GETs over one keep-alive connection; the answers' bodies and
    /// status lines.
    private func calls(_ url: String, _ count: Int, headers: [String] = []) async throws -> CurlResult {
        let args = headers.flatMap { ["-H", $0] } + ["\(url)?n=[1-\(count)]"]
        return try await Curl.run(args, timeout: 60)
    }

    private static let route = """
        kind: HTTPRoute
        name: orders-split
        parentRefs: [{name: orders}]
        rules:
          - name: canary-header
            matches: [{headers: [{name: x-canary, value: "1"}]}]
            backendRefs: [{name: orders, version: v2}]
            filters:
              - type: ResponseHeaderModifier
                responseHeaderModifier: {set: [{name: x-route, value: canary}]}
          - name: slow
            matches: [{headers: [{name: x-slow, value: "1"}]}]
            filters: [{type: Fault, fault: {delay: {fixedDelay: 400ms, percent: 100}}}]
            timeouts: {request: 5s}
          - name: moved
            matches: [{path: {type: PathPrefix, value: /old}}]
            filters:
              - type: RequestRedirect
                requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
          - name: faulty
            matches: [{path: {type: PathPrefix, value: /faulty}}]
            filters: [{type: Fault, fault: {abort: {httpStatus: 418, percent: 10}}}]
          - name: split
            backendRefs: [{name: orders, version: v1, weight: 90}, {name: orders, version: v2, weight: 10}]
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: x-from-route, value: split}], remove: [x-secret]}
        """

    @Test func aRouteFromTheControllerSplitsMatchesRewritesAndAbortsAtARunningCaller() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let v1 = try await TestMesh.startApp("orders-1")
        let v2 = try await TestMesh.startApp("orders-2")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            sidecars.append(
                try await startServer("orders", app: v1, controller: controller, extra: ["--version", "v1"])
            )
            sidecars.append(
                try await startServer("orders", app: v2, controller: controller, extra: ["--version", "v2"])
            )
            let accessLog = controller.dataDirectory + "-web-access.log"
            defer { try? FileManager.default.removeItem(atPath: accessLog) }
            let web = try await startClient(
                "web",
                calling: "orders",
                controller: controller,
                extra: ["--access-log", accessLog]
            )
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")

            // Invalid routes are refused with every field's path; nothing is stored.
            let bad = try await controller.call(
                "PUT",
                "/v1/routes/bad",
                body: #"{"parentRefs": [{"name": "orders"}], "rules": [{"backendRefs": [{"name": "Orders"}]}]}"#
            )
            #expect(bad.status == 400 && bad.text.contains("rules[0].backendRefs[0].name"), "\(bad.text)")

            let applied = try await controller.apply(Self.route)
            #expect(applied.exitCode == 0, "\(applied.output)")
            // A header match to the v2 subset, with the response header the rule sets.
            #expect(
                try await eventually {
                    let answer = try await Curl.run(["-H", "x-canary: 1", url + "/"])
                    return answer.text == "hello from orders-2\n" && answer.header("x-route") == "canary"
                },
                "\(web.log)"
            )
            // (Counted by the apps: the bodies of a curl URL range overwrite each other.)
            var before = (v1.requestCount, v2.requestCount)
            let canaries = try await calls(url + "/", 20, headers: ["x-canary: 1"])
            #expect(canaries.statusLines.filter { $0.contains(" 200") }.count == 20)
            #expect(v1.requestCount == before.0 && v2.requestCount == before.1 + 20)

            // The split: 90/10 over the versions, exact over 1,000 requests (one event loop).
            before = (v1.requestCount, v2.requestCount)
            let split = try await calls(url + "/", 1000)
            let toV1 = v1.requestCount - before.0
            let toV2 = v2.requestCount - before.1
            #expect(split.statusLines.filter { $0.contains(" 200") }.count == 1000)
            #expect(toV1 + toV2 == 1000)
            #expect((90...110).contains(toV2), "v2 got \(toV2) of 1000")

            // The request as the rule changes it.
            let head = try await Curl.run(["-H", "x-secret: s", url + "/headers"])
            #expect(head.text.contains("x-from-route: split"), "\(head.text)")
            #expect(!head.text.contains("x-secret"), "\(head.text)")

            // A delay fault: the request waits 400 ms in the caller's sidecar, and the next hop
            // is told the time left after it (5 s - 400 ms), not the route's 5 s.
            let started = ContinuousClock.now
            let slow = try await Curl.run(["-H", "x-slow: 1", url + "/headers"])
            let waited = ContinuousClock.now - started
            #expect(slow.status == 200 && waited >= .milliseconds(400), "\(waited) \(slow.text)")
            let told = slow.text.split(separator: "\n").first { $0.hasPrefix("x-meshwork-timeout: ") }
                .flatMap { Int($0.dropFirst("x-meshwork-timeout: ".count)) }
            #expect(told.map { (4000...4600).contains($0) } == true, "\(slow.text)")

            // A redirect, answered by the caller's sidecar: the prefix replaced, the query kept.
            before = (v1.requestCount, v2.requestCount)
            let moved = try await Curl.run([url + "/old/x?q=1"])
            #expect(moved.status == 301, "\(moved.statusLines)")
            #expect(moved.header("location") == "\(url)/new/x?q=1", "\(moved.headers)")
            #expect(moved.body.isEmpty && moved.header("x-meshwork-error") == nil)
            #expect(v1.requestCount == before.0 && v2.requestCount == before.1, "a redirect reached an app")

            // A 10% abort: 1 in 10 answered by the caller's sidecar, labelled as the fault.
            let faults = try await calls(url + "/faulty/x", 1000)
            let aborted = faults.statusLines.filter { $0.contains(" 418") }.count
            #expect((85...115).contains(aborted), "\(aborted) of 1000 aborted")
            let one = try await eventually {
                let answer = try await Curl.run([url + "/faulty/y"])
                return answer.status == 418 && answer.header("x-meshwork-error") == "fault_abort"
            }
            #expect(one)
            // The rule that decided each exchange is in the caller's access log.
            // (The log is written in batches: wait, bounded, for the lines to be there.)
            var lines = ""
            let logged = try await eventually {
                lines = (try? String(contentsOfFile: accessLog, encoding: .utf8)) ?? ""
                return lines.contains(#""route":"orders-split/split""#)
                    && lines.split(separator: "\n").contains {
                        $0.contains(#""route":"orders-split/faulty""#) && $0.contains(#""mesh_error":"fault_abort""#)
                    }
            }
            #expect(logged, "\(lines.suffix(600))")
            let listed = try await Command.run([
                CLITests.binary, "ctl", "routes", "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token",
            ])
            #expect(
                listed.output.contains("orders-split") && listed.output.contains("orders@v2:10"),
                "\(listed.output)"
            )

            // Deleted: every request goes to the service again, no fault, no header.
            let deleted = try await controller.call("DELETE", "/v1/routes/orders-split")
            #expect(deleted.status == 200, "\(deleted.text)")
            // Its subsets' clusters go with it (the caller keeps no cluster no route names).
            #expect(try await web.waitForLog("route backends removed"), "\(web.log)")
            let removal = web.log.split(separator: "\n").first { $0.contains("route backends removed") } ?? ""
            #expect(removal.contains("orders~version=v1") && removal.contains("orders~version=v2"), "\(removal)")
            #expect(
                try await eventually {
                    let answer = try await Curl.run(["-H", "x-canary: 1", url + "/headers"])
                    return answer.status == 200 && answer.header("x-route") == nil
                        && !answer.text.contains("x-from-route")
                }
            )
            let after = try await calls(url + "/faulty/z", 100)
            #expect(after.statusLines.filter { $0.contains(" 418") }.isEmpty)
            // The header no longer pins v2: the service's balancer sends some of them to v1.
            before = (v1.requestCount, v2.requestCount)
            _ = try await calls(url + "/", 100, headers: ["x-canary: 1"])
            #expect(v1.requestCount > before.0, "v1 got none of 100 after the route went")
            #expect(v1.requestCount - before.0 + v2.requestCount - before.1 == 100)
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await v1.stop()
        await v2.stop()
        await controller.stop()
    }
}

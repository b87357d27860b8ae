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
    private func calls(
        _ url: String,
        _ count: Int,
        headers: [String] = [],
        timeout: Int = 60
    ) async throws -> CurlResult {
        let args = headers.flatMap { ["-H", $0] } + ["\(url)?n=[1-\(count)]"]
        return try await Curl.run(args, timeout: timeout)
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
          - name: too-slow
            matches: [{headers: [{name: x-slow, value: "2"}]}]
            filters: [{type: Fault, fault: {delay: {fixedDelay: 3s, percent: 100}}}]
            timeouts: {request: 300ms}
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
            let adminToken = controller.dataDirectory + "-web-admin-token"
            defer {
                try? FileManager.default.removeItem(atPath: accessLog)
                try? FileManager.default.removeItem(atPath: adminToken)
            }
            let web = try await startClient(
                "web",
                calling: "orders",
                controller: controller,
                extra: ["--access-log", accessLog, "--admin-token-file", adminToken]
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

            // The split: 90/10 over the versions, within a point over 10,000 requests (exact on
            // one event loop), and counted on the caller's edge under the rule's name.
            // (One series per version subset the rule sent to: `backend` label.)
            let split2xx = { () async throws -> (v1: Double, v2: Double) in
                let prefix =
                    #"meshwork_edge_requests_total{direction="outbound",peer="orders",route="orders-split/split""#
                return (
                    try await Self.sum(web, prefix + #",backend="orders~version=v1""#, #"class="2xx""#),
                    try await Self.sum(web, prefix + #",backend="orders~version=v2""#, #"class="2xx""#)
                )
            }
            let edgeBefore = try await split2xx()
            before = (v1.requestCount, v2.requestCount)
            let split = try await calls(url + "/", 10000, timeout: 120)
            let toV1 = v1.requestCount - before.0
            let toV2 = v2.requestCount - before.1
            #expect(split.statusLines.filter { $0.contains(" 200") }.count == 10000)
            #expect(toV1 + toV2 == 10000)
            #expect((900...1100).contains(toV2), "v2 got \(toV2) of 10,000")
            let edgeAfter = try await split2xx()
            let counted = (edgeAfter.v1 - edgeBefore.v1, edgeAfter.v2 - edgeBefore.v2)
            #expect(
                counted == (Double(toV1), Double(toV2)),
                "\(counted) counted under the rule, by backend; the apps saw \(toV1), \(toV2)"
            )

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

            // A delay past the request's deadline: the route's timeout, labelled as the fault's,
            // and the request never left.
            before = (v1.requestCount, v2.requestCount)
            let tooSlow = try await Curl.run(["-H", "x-slow: 2", url + "/"])
            #expect(
                tooSlow.status == 504 && tooSlow.header("x-meshwork-error") == "fault_delay_timeout",
                "\(tooSlow.headers)"
            )
            #expect(v1.requestCount == before.0 && v2.requestCount == before.1, "a delayed request left")

            // A redirect, answered by the caller's sidecar: the prefix replaced, the query kept.
            before = (v1.requestCount, v2.requestCount)
            let moved = try await Curl.run([url + "/old/x?q=1"])
            #expect(moved.status == 301, "\(moved.statusLines)")
            #expect(moved.header("location") == "\(url)/new/x?q=1", "\(moved.headers)")
            #expect(moved.body.isEmpty && moved.header("x-meshwork-error") == nil)
            #expect(v1.requestCount == before.0 && v2.requestCount == before.1, "a redirect reached an app")

            // A 10% abort: 1 in 10 answered by the caller's sidecar, labelled as the fault and
            // counted under its reason, on the listener and on the edge.
            let listenerAborts = {
                try await Self.sum(web, "meshwork_listener_mesh_errors_total{", #"reason="fault_abort""#)
            }
            let edgeAborts = { try await Self.sum(web, "meshwork_edge_mesh_errors_total{", #"reason="fault_abort""#) }
            let countedBefore = (try await listenerAborts(), try await edgeAborts())
            let faults = try await calls(url + "/faulty/x", 1000)
            let aborted = faults.statusLines.filter { $0.contains(" 418") }.count
            #expect((85...115).contains(aborted), "\(aborted) of 1000 aborted")
            var countedAborts = (0.0, 0.0)
            #expect(
                try await eventually {
                    countedAborts = (
                        try await listenerAborts() - countedBefore.0, try await edgeAborts() - countedBefore.1
                    )
                    return countedAborts == (Double(aborted), Double(aborted))
                },
                "\(aborted) aborted, counted \(countedAborts)"
            )
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
            // And in the caller's tap events: three outbound calls under /faulty, each naming
            // the rule (the tap ends at its limit).
            let token = try String(contentsOfFile: adminToken, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let admin = "http://127.0.0.1:\(web.port("admin") ?? 0)"
            async let tapped = Curl.run(
                ["-N", "-H", "authorization: Bearer \(token)", admin + "/tap?direction=outbound&path=/faulty&limit=3"],
                timeout: 30
            )
            #expect(try await eventually { try await web.metric("meshwork_tap_subscribers") == 1 })
            _ = try await calls(url + "/faulty/tapped", 3)
            let tapLines = try await tapped.text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }.filter { $0["path"] != nil }
            #expect(tapLines.count == 3, "\(tapLines)")
            #expect(
                tapLines.allSatisfy {
                    $0["route"] as? String == "orders-split/faulty" && $0["direction"] as? String == "outbound"
                },
                "\(tapLines)"
            )
            // A newer route with the same match as orders-split's canary rule, to a version no
            // instance has: it is stored, marked conflicted and unresolved, and takes nothing.
            let updates = web.logCount("routes updated")
            let shadow = try await controller.apply(
                """
                kind: HTTPRoute
                name: orders-shadowed
                parentRefs: [{name: orders}]
                rules:
                  - matches: [{headers: [{name: x-canary, value: "1"}]}]
                    backendRefs: [{name: orders, version: v9}]
                """
            )
            #expect(shadow.exitCode == 0, "\(shadow.output)")
            #expect(try await web.waitForLog("routes updated", beyond: updates), "\(web.log)")
            let status = try await controller.call("GET", "/v1/routes/orders-shadowed")
            let conditions =
                ((try? JSONSerialization.jsonObject(with: Data(status.text.utf8)) as? [String: Any])?["status"]
                as? [String: Any])?["conditions"] as? [[String: Any]] ?? []
            let byType = Dictionary(uniqueKeysWithValues: conditions.map { ($0["type"] as? String ?? "", $0) })
            #expect(byType["Accepted"]?["status"] as? String == "True", "\(status.text)")
            #expect(byType["ResolvedRefs"]?["reason"] as? String == "BackendNotFound", "\(status.text)")
            #expect(byType["Conflicted"]?["status"] as? String == "True", "\(status.text)")
            #expect((byType["Conflicted"]?["message"] as? String ?? "").contains("orders-split"), "\(status.text)")
            let listed = try await Command.run([
                CLITests.binary, "ctl", "routes", "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token",
            ])
            #expect(
                listed.output.contains("orders-split") && listed.output.contains("orders@v2:10"),
                "\(listed.output)"
            )
            let rows = listed.output.split(separator: "\n")
            #expect(rows.contains { $0.hasPrefix("orders-shadowed") && $0.contains("BackendNotFound,ShadowedMatch") })
            #expect(rows.contains { $0.hasPrefix("orders-split") && $0.contains("Accepted") }, "\(listed.output)")
            // Precedence still sends the canary header to v2 (the older route).
            before = (v1.requestCount, v2.requestCount)
            _ = try await calls(url + "/", 10, headers: ["x-canary: 1"])
            #expect(v2.requestCount - before.1 == 10 && v1.requestCount == before.0)
            #expect(try await controller.call("DELETE", "/v1/routes/orders-shadowed").status == 200)
            #expect(
                try await eventually {
                    web.log.split(separator: "\n").contains {
                        $0.contains("route backends removed") && $0.contains("orders~version=v9")
                    }
                },
                "\(web.log)"
            )
            let removals = web.logCount("route backends removed")

            // Deleted: every request goes to the service again, no fault, no header.
            let deleted = try await controller.call("DELETE", "/v1/routes/orders-split")
            #expect(deleted.status == 200, "\(deleted.text)")
            // Its subsets' clusters go with it (the caller keeps no cluster no route names).
            #expect(try await web.waitForLog("route backends removed", beyond: removals), "\(web.log)")
            let removal = web.log.split(separator: "\n").last { $0.contains("route backends removed") } ?? ""
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
            // (Peak EWMA gives sequential calls to the faster of the two, and the other's
            // cost decays until it is picked again: batches until v1 gets one, bounded.)
            before = (v1.requestCount, v2.requestCount)
            var sent = 0
            let deadline = ContinuousClock.now + .seconds(20)
            repeat {
                _ = try await calls(url + "/", 50, headers: ["x-canary: 1"])
                sent += 50
            } while v1.requestCount == before.0 && ContinuousClock.now < deadline
            #expect(v1.requestCount > before.0, "v1 got none of \(sent) after the route went")
            #expect(v1.requestCount - before.0 + v2.requestCount - before.1 == sent)
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await v1.stop()
        await v2.stop()
        await controller.stop()
    }

    /// The sum of a sidecar's `/metrics` samples whose series starts with `prefix` and
    /// names `label` (every label set of one reason, say).
    static func sum(_ sidecar: SidecarProcess, _ prefix: String, _ label: String) async throws -> Double {
        let text = try await Curl.get("http://127.0.0.1:\(sidecar.port("admin") ?? 0)/metrics").text
        return text.split(separator: "\n").filter { $0.hasPrefix(prefix) && $0.contains(label) }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
    }

    private static let mirrorRoute = """
        kind: HTTPRoute
        name: orders-mirror
        parentRefs: [{name: orders}]
        rules:
          - filters:
              - type: RequestMirror
                requestMirror: {backendRef: {name: audit}, percent: 50}
        """

    private static func mirrorSeries(_ result: String) -> String {
        #"meshwork_cluster_mirror_requests_total{cluster="audit",result="\#(result)"}"#
    }

    private static let matrix = """
        kind: HTTPRoute
        name: orders-matrix
        parentRefs: [{name: orders}]
        rules:
          - name: exact
            matches: [{path: {type: Exact, value: /headers/exact}}]
            backendRefs: [{name: orders, version: v2}]
          - name: regex
            matches: [{path: {type: RegularExpression, value: "/headers/items/[0-9]+"}}]
            backendRefs: [{name: orders, version: v2}]
          - name: query
            matches: [{path: {type: PathPrefix, value: /headers}, queryParams: [{name: track, value: beta}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: method
            matches: [{path: {type: PathPrefix, value: /headers}, method: POST}]
            backendRefs: [{name: orders, version: v2}]
          - name: rewrite
            matches: [{path: {type: PathPrefix, value: /legacy}}]
            filters:
              - type: URLRewrite
                urlRewrite: {hostname: orders.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /headers}}
            backendRefs: [{name: orders, version: v1}]
          - name: header-regex
            matches: [{path: {type: PathPrefix, value: /headers}, headers: [{type: RegularExpression, name: x-user, value: "beta-[0-9]+"}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: header-present
            matches: [{path: {type: PathPrefix, value: /headers}, headers: [{type: Present, name: x-debug}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: header-absent
            matches: [{path: {type: PathPrefix, value: /headers}, headers: [{type: Absent, name: x-debug}, {name: x-probe, value: "1"}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: full-path
            matches: [{path: {type: PathPrefix, value: /full}}]
            filters:
              - type: URLRewrite
                urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /headers/whole}}
            backendRefs: [{name: orders, version: v1}]
          - name: edits
            matches: [{path: {type: PathPrefix, value: /edits}}]
            filters:
              - type: URLRewrite
                urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /headers}}
              - type: RequestHeaderModifier
                requestHeaderModifier: {add: [{name: x-tag, value: route}]}
              - type: ResponseHeaderModifier
                responseHeaderModifier: {add: [{name: x-added, value: "yes"}], remove: [x-served-by]}
            backendRefs: [{name: orders, version: v1}]
          - name: elsewhere
            matches: [{path: {type: PathPrefix, value: /away}}]
            filters:
              - type: RequestRedirect
                requestRedirect: {scheme: https, hostname: shop.example, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /landing}, statusCode: 308}
          - name: deadline
            matches: [{path: {type: PathPrefix, value: /delay/2000}}]
            timeouts: {request: 300ms}
            backendRefs: [{name: orders, version: v1}]
          - name: per-try
            matches: [{path: {type: PathPrefix, value: /delay}}]
            timeouts: {request: 5s, backendRequest: 300ms}
            retry: {attempts: 1, codes: [504], backoff: 10ms}
            backendRefs: [{name: orders, version: v1}]
          - name: rest
            backendRefs: [{name: orders, version: v1}]
        """

    /// Gateway API's other MESH-HTTP features at a running caller: Exact and
    /// RegularExpression paths, query and method matches, URLRewrite of the path prefix and
    /// the host, and a per-try (`backendRequest`) timeout with the rule's retry.
    @Test func exactRegexQueryAndMethodMatchesRewritesAndPerTryTimeoutsHoldAtARunningCaller() async throws {
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
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")
            #expect(try await controller.apply(Self.matrix).exitCode == 0)
            func servedBy(_ path: String, _ extra: [String] = []) async throws -> String? {
                try await Curl.run(extra + [url + path]).header("x-served-by")
            }
            #expect(try await eventually { try await servedBy("/headers/exact") == "orders-2" }, "\(web.log)")
            #expect(try await servedBy("/headers/exact/more") == "orders-1", "Exact is not a prefix")
            #expect(try await servedBy("/headers/items/42") == "orders-2")
            #expect(try await servedBy("/headers/items/4x") == "orders-1", "the expression matches the whole path")
            #expect(try await servedBy("/headers/a?track=beta") == "orders-2")
            #expect(try await servedBy("/headers/a?x=1&track=beta") == "orders-2")
            #expect(try await servedBy("/headers/a?track=beta2") == "orders-1", "a query value matches exactly")
            #expect(try await servedBy("/headers/a", ["-X", "POST", "-d", "x"]) == "orders-2")
            #expect(try await servedBy("/headers/a") == "orders-1")

            // The prefix replaced and the host rewritten, the query kept.
            let rewritten = try await Curl.run([url + "/legacy/x?q=1"])
            #expect(rewritten.text.hasPrefix("GET /headers/x?q=1 "), "\(rewritten.text)")
            #expect(rewritten.text.contains("host: orders.internal"), "\(rewritten.text)")

            // Headers by expression (the whole value), present, and absent (with another match).
            #expect(try await servedBy("/headers/a", ["-H", "x-user: beta-12"]) == "orders-2")
            #expect(try await servedBy("/headers/a", ["-H", "x-user: beta-12x"]) == "orders-1")
            #expect(try await servedBy("/headers/a", ["-H", "x-debug;"]) == "orders-2", "present, even empty")
            #expect(try await servedBy("/headers/a", ["-H", "x-probe: 1"]) == "orders-2")
            #expect(
                try await servedBy("/headers/a", ["-H", "x-probe: 1", "-H", "x-debug: 1"]) == "orders-2",
                "absent fails when the header is there; present holds"
            )

            // The whole path replaced (the query kept).
            let whole = try await Curl.run([url + "/full/deep/path?q=2"])
            #expect(whole.text.hasPrefix("GET /headers/whole?q=2 "), "\(whole.text)")
            // A request header added beside the caller's own; a response header added and
            // one of the app's removed.
            let edited = try await Curl.run(["-H", "x-tag: caller", url + "/edits/x"])
            let tags = edited.text.split(separator: "\n").filter { $0.hasPrefix("x-tag: ") }
            #expect(Set(tags) == ["x-tag: caller", "x-tag: route"], "\(edited.text)")
            #expect(edited.header("x-added") == "yes", "\(edited.headers)")
            #expect(edited.header("x-served-by") == nil, "\(edited.headers)")
            #expect(edited.text.hasPrefix("GET /headers/x "), "\(edited.text)")
            // A redirect elsewhere: scheme, host, port and the whole path, answered with 308.
            let before0 = v1.requestCount + v2.requestCount
            let away = try await Curl.run([url + "/away/x?q=3"])
            #expect(away.status == 308, "\(away.statusLines)")
            #expect(away.header("location") == "https://shop.example:8443/landing?q=3", "\(away.headers)")
            #expect(v1.requestCount + v2.requestCount == before0, "a redirect reached an app")

            // timeouts.request: a 2 s answer is cut at the route's 300 ms.
            let cutStarted = ContinuousClock.now
            let cut = try await Curl.run([url + "/delay/2000"])
            let cutTook = ContinuousClock.now - cutStarted
            #expect(cut.status == 504 && cut.header("x-meshwork-error") == "upstream_timeout", "\(cut.headers)")
            #expect(cutTook < .milliseconds(1500), "\(cutTook)")

            // Each try gets 300 ms of the 5 s: two tries of a 1.5 s answer, then a timeout.
            let before = v1.requestCount
            let started = ContinuousClock.now
            let slow = try await Curl.run([url + "/delay/1500"])
            let took = ContinuousClock.now - started
            #expect(slow.status == 504, "\(slow.statusLines) \(slow.headers)")
            #expect(took < .milliseconds(1400), "\(took)")
            #expect(v1.requestCount - before == 2, "\(v1.requestCount - before) tries")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await v1.stop()
        await v2.stop()
        await controller.stop()
    }

    @Test func aMirrorGetsItsShareOfCopiesWhileTheCallerNeitherWaitsForItNorSeesItsFailures() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let orders = try await TestMesh.startApp("orders-1")
        let audit = try await TestMesh.startApp("audit-1")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            sidecars.append(try await startServer("orders", app: orders, controller: controller))
            sidecars.append(try await startServer("audit", app: audit, controller: controller))
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")
            // The caller's time for 20 calls before any mirror (the best of three, warm).
            var unmirrored = Duration.seconds(60)
            for _ in 0..<3 {
                let started = ContinuousClock.now
                _ = try await calls(url + "/", 20)
                unmirrored = min(unmirrored, ContinuousClock.now - started)
            }
            let applied = try await controller.apply(Self.mirrorRoute)
            #expect(applied.exitCode == 0, "\(applied.output)")
            // Within one push the caller watches the mirror's service and sends it copies.
            #expect(
                try await eventually {
                    let before = audit.requestCount
                    _ = try await calls(url + "/", 2)
                    return try await eventually(seconds: 2) { audit.requestCount > before }
                },
                "\(web.log)"
            )

            // A mirror that takes 5 s to answer: twenty calls take the caller what they took
            // without a mirror (within twice that and 250 ms, where waiting for one copy would
            // cost 5 s), and exactly half of them were copied (one loop).
            audit.setSlow(.seconds(5))
            var before = (orders.requestCount, audit.requestCount)
            let started = ContinuousClock.now
            let quick = try await calls(url + "/", 20)
            let took = ContinuousClock.now - started
            #expect(quick.statusLines.filter { $0.contains(" 200") }.count == 20, "\(quick.statusLines)")
            #expect(
                took < unmirrored * 2 + .milliseconds(250),
                "the caller's 20 calls took \(took) with a mirror, \(unmirrored) without"
            )
            #expect(orders.requestCount - before.0 == 20)
            #expect(try await eventually { audit.requestCount - before.1 == 10 }, "\(audit.requestCount - before.1)")

            // A failing mirror: the caller still gets the service's answers; the copies'
            // failures are counted on the caller's sidecar, not returned.
            audit.setSlow(.zero)
            audit.setFailing(500)
            let failedBefore = try await web.metric(Self.mirrorSeries("error_status"))
            before = (orders.requestCount, audit.requestCount)
            let unharmed = try await calls(url + "/", 20)
            #expect(unharmed.statusLines.filter { $0.contains(" 200") }.count == 20, "\(unharmed.statusLines)")
            var failed = 0.0
            #expect(
                try await eventually {
                    failed = try await web.metric(Self.mirrorSeries("error_status")) - failedBefore
                    return failed == 10
                },
                "\(failed) copies counted as failed"
            )
            audit.setFailing(nil)

            // Bodies are copied up to 64 KiB: a small one is mirrored, a larger one is not
            // (counted), and both callers get their whole echo.
            let small = FileManager.default.temporaryDirectory.appendingPathComponent("mw-mirror-\(UUID().uuidString)")
            let large = small.appendingPathExtension("large")
            defer {
                try? FileManager.default.removeItem(at: small)
                try? FileManager.default.removeItem(at: large)
            }
            try Data(repeating: 0x61, count: 1000).write(to: small)
            try Data(repeating: 0x62, count: 100 * 1024).write(to: large)
            let tooLargeBefore = try await web.metric(Self.mirrorSeries("body_too_large"))
            for file in [large, large] {
                let echoed = try await Curl.run(["--data-binary", "@\(file.path)", url + "/echo"])
                #expect(echoed.status == 200 && echoed.body.count == 100 * 1024, "\(echoed.statusLines)")
            }
            #expect(try await web.metric(Self.mirrorSeries("body_too_large")) - tooLargeBefore == 1)
            let answeredBefore = try await web.metric(Self.mirrorSeries("answered"))
            for file in [small, small] {
                let echoed = try await Curl.run(["--data-binary", "@\(file.path)", url + "/echo"])
                #expect(echoed.status == 200 && echoed.body.count == 1000, "\(echoed.statusLines)")
            }
            var answered = 0.0
            #expect(
                try await eventually {
                    answered = try await web.metric(Self.mirrorSeries("answered")) - answeredBefore
                    return answered == 1
                },
                "\(answered) copies answered"
            )

            // The route goes: the caller stops following audit (watched only for the mirror),
            // so a change of audit's instance no longer reaches it.
            #expect(try await controller.call("DELETE", "/v1/routes/orders-mirror").status == 200)
            #expect(
                try await eventually {
                    web.log.split(separator: "\n").contains {
                        $0.contains("route services unwatched") && $0.contains("audit")
                    }
                },
                "\(web.log)"
            )
            let auditUpdates = web.log.split(separator: "\n").filter {
                $0.contains("cluster updated") && $0.contains("audit")
            }.count
            let auditSidecar = sidecars.remove(at: 1)
            await auditSidecar.stop()
            // (Its deregistration is a registry change the caller would have applied.)
            #expect(
                try await eventually {
                    try await !controller.call("GET", "/v1/instances?service=audit").text.contains("\"id\"")
                }
            )
            let copies = audit.requestCount
            let plain = try await calls(url + "/", 10)
            #expect(plain.statusLines.filter { $0.contains(" 200") }.count == 10)
            #expect(audit.requestCount == copies, "a copy after the route went")
            let after = web.log.split(separator: "\n").filter {
                $0.contains("cluster updated") && $0.contains("audit")
            }.count
            #expect(after == auditUpdates, "the caller still follows audit:\n\(web.log.suffix(1500))")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await audit.stop()
        await controller.stop()
    }

    private static let grpcRoute = """
        kind: GRPCRoute
        name: orders-grpc
        parentRefs: [{name: orders}]
        rules:
          - name: canary
            matches: [{method: {service: meshwork.test.Probe, method: Who}, headers: [{name: x-track, value: canary}]}]
            backendRefs: [{name: orders, version: v2}]
          - name: probe
            matches: [{method: {service: meshwork.test.Probe}}]
            backendRefs: [{name: orders, version: v1}]
          - name: flaky
            matches: [{method: {service: grpc.testing.TestService, method: EmptyCall}}]
            filters: [{type: Fault, fault: {abort: {grpcStatus: 8, percent: 10}}}]
        """

    /// `grpc_interop.py who`: how many of `count` Probe/Who calls each server (or error code)
    /// answered.
    private func who(_ port: Int, _ count: Int, metadata: [String] = []) async throws -> [String: Int] {
        let result = try await Command.run(
            ["timeout", "120", "python3", "\(TestMesh.clients)/grpc_interop.py", "who", String(port), String(count)]
                + metadata
        )
        let line = result.output.split(separator: "\n").last.map(String.init) ?? ""
        return (try? JSONDecoder().decode([String: Int].self, from: Data(line.utf8))) ?? ["output": -1]
    }

    /// A GRPCRoute with grpcio on both ends: the call's method (and a header) picks the
    /// version, a method's fault aborts exactly its share with the gRPC status asked for.
    @Test func aGRPCRouteMatchesMethodsAndHeadersAndAbortsWithAGRPCStatus() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let v1 = try await FixtureServer.start("grpc_interop.py", ["server", "v1"])
        let v2 = try await FixtureServer.start("grpc_interop.py", ["server", "v2"])
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            for (version, server) in [("v1", v1), ("v2", v2)] {
                let sidecar = try await SidecarProcess.start(
                    [
                        "--service", "orders", "--app-port", String(server.port("grpc")), "--app-protocol", "h2c",
                        "--version", version, "--controller", controller.url, "--join-token-file",
                        try await controller.joinTokenFile("orders"), "--ttl", "3s",
                    ],
                    waitFor: ["inbound", "admin"]
                )
                sidecars.append(sidecar)
                #expect(try await sidecar.waitForLog("registered"), "\(sidecar.log)")
            }
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            let port = web.port("upstream:orders") ?? 0
            // Both versions registered, the caller reaches the service.
            #expect(
                try await eventually {
                    let answers = try await who(port, 5)
                    return answers.values.reduce(0, +) == 5 && Set(answers.keys).isSubset(of: ["v1", "v2"])
                },
                "\(web.log)"
            )

            let applied = try await controller.apply(Self.grpcRoute)
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await eventually { try await who(port, 20) == ["v1": 20] }, "\(web.log)")
            #expect(try await who(port, 50, metadata: ["x-track=canary"]) == ["v2": 50])
            #expect(try await who(port, 50, metadata: ["x-track=stable"]) == ["v1": 50])

            // The fault: exactly 1 in 10 EmptyCalls answered RESOURCE_EXHAUSTED by the caller's
            // sidecar (one loop), the others by a server.
            let empty = try await Command.run([
                "timeout", "120", "python3", "-c",
                """
                import grpc, json, sys
                channel = grpc.insecure_channel("127.0.0.1:\(port)", options=[("grpc.enable_retries", 0)])
                call = channel.unary_unary("/grpc.testing.TestService/EmptyCall")
                codes = {}
                for _ in range(1000):
                    try:
                        call(b"", timeout=5)
                        code = "OK"
                    except grpc.RpcError as error:
                        code = error.code().name
                        if code == "RESOURCE_EXHAUSTED" and dict(error.trailing_metadata()).get("x-meshwork-error") != "fault_abort":
                            code = "unlabelled"
                    codes[code] = codes.get(code, 0) + 1
                print(json.dumps(codes))
                """,
            ])
            let line = empty.output.split(separator: "\n").last.map(String.init) ?? ""
            let codes = (try? JSONDecoder().decode([String: Int].self, from: Data(line.utf8))) ?? [:]
            #expect(codes["OK", default: 0] + codes["RESOURCE_EXHAUSTED", default: 0] == 1000, "\(empty.output)")
            #expect((85...115).contains(codes["RESOURCE_EXHAUSTED", default: 0]), "\(codes)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await v1.stop()
        await v2.stop()
        await controller.stop()
    }
}

import Foundation
import MeshworkDemo
import Testing

/// Rollouts (issue 19) driven by a real controller over real sidecars and demo apps: the
/// controller moves the callers of `orders` from v1 to v2 through the route it writes,
/// analyses v2 with the v2 sidecar's own reports, and promotes or rolls back by itself.
@Suite("Rollouts end to end", .serialized)
struct RolloutTests {
    /// A controller, orders v1 and v2 (reporting every 200 ms), and a caller.
    private struct Mesh {
        let controller: ControllerProcess
        let v1: DemoApp
        let v2: DemoApp
        var sidecars: [SidecarProcess]
        let url: String

        static func start() async throws -> Mesh {
            let controller = try await ControllerProcess.start()
            let v1 = try await TestMesh.startApp("orders-1")
            let v2 = try await TestMesh.startApp("orders-2")
            var sidecars: [SidecarProcess] = []
            let telemetry = ["--telemetry-interval", "200ms"]
            sidecars.append(
                try await startServer(
                    "orders",
                    app: v1,
                    controller: controller,
                    extra: ["--version", "v1"] + telemetry
                )
            )
            sidecars.append(
                try await startServer(
                    "orders",
                    app: v2,
                    controller: controller,
                    extra: ["--version", "v2"] + telemetry
                )
            )
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            return Mesh(controller: controller, v1: v1, v2: v2, sidecars: sidecars, url: web.upstreamURL("orders"))
        }

        func stop() async {
            for sidecar in sidecars { await sidecar.stop() }
            await v1.stop()
            await v2.stop()
            await controller.stop()
            controller.remove()
        }

        func rollout(_ name: String) async throws -> [String: Any] {
            let answer = try await controller.call("GET", "/v1/rollouts/\(name)")
            return (try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]) ?? [:]
        }

        func status(_ name: String) async throws -> [String: Any] {
            try await rollout(name)["status"] as? [String: Any] ?? [:]
        }

        /// The weights (stable, canary) of the route the rollout writes.
        func weights(_ name: String) async throws -> [Int] {
            let answer = try await controller.call("GET", "/v1/routes/rollout-\(name)")
            let route = (try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]) ?? [:]
            let rules = route["rules"] as? [[String: Any]] ?? []
            return (rules.last?["backendRefs"] as? [[String: Any]] ?? []).map { $0["weight"] as? Int ?? -1 }
        }

        func ctl(_ arguments: [String]) async throws -> (exitCode: Int32, output: String) {
            try await Command.run(
                [CLITests.binary, "ctl"] + arguments + [
                    "--controller", controller.url, "--token-file", controller.dataDirectory + "/token",
                ]
            )
        }
    }

    /// Requests through the caller until cancelled, 20 at a time: how many were not 200.
    private final class Load: @unchecked Sendable {
        private let lock = NSLock()
        private var failures = 0
        private var sent = 0
        private var task: Task<Void, Never>?

        init(_ url: String) {
            task = Task { [weak self] in
                // Bounded: at most 10 minutes of load.
                let deadline = ContinuousClock.now + .seconds(600)
                while !Task.isCancelled, ContinuousClock.now < deadline {
                    guard let answer = try? await Curl.run([url + "/?n=[1-20]"]) else { continue }
                    let failed = answer.statusLines.filter { !$0.contains(" 200") }.count
                    self?.add(sent: answer.statusLines.count, failed: failed)
                }
            }
        }

        private func add(sent: Int, failed: Int) {
            lock.withLock {
                self.sent += sent
                failures += failed
            }
        }

        var counts: (sent: Int, failures: Int) { lock.withLock { (sent, failures) } }

        func stop() async {
            task?.cancel()
            await task?.value
        }
    }

    @Test func aHealthyCanaryIsPromotedThroughEveryStepAndARestartedControllerResumesIt() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let mesh = try await Mesh.start()
        let load = Load(mesh.url)
        do {
            let applied = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-v2
                service: orders
                stable: v1
                canary: v2
                steps:
                  - setWeight: 20
                  - analysis: {successRate: 95, interval: 2s, minRequests: 5}
                  - setWeight: 50
                  - pause: {}
                  - setWeight: 80
                  - analysis: {successRate: 95, p99: 2s, interval: 2s, minRequests: 5}
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await mesh.weights("orders-v2") == [80, 20])
            // The first analysis passes on v2's own figures; the rollout holds at the pause.
            let paused = try await eventually(seconds: 30) {
                let status = try await mesh.status("orders-v2")
                return status["phase"] as? String == "Paused" && status["step"] as? Int == 3
            }
            let atPause = try await mesh.rollout("orders-v2")
            #expect(paused, "\(atPause)")
            #expect(try await mesh.weights("orders-v2") == [50, 50])
            let figures = try await mesh.status("orders-v2")["figures"] as? [String: Any] ?? [:]
            #expect((figures["requests"] as? Int ?? 0) >= 5 && figures["successRate"] as? Double == 100, "\(figures)")

            // A restarted controller is where it was.
            await mesh.controller.stop()
            try await mesh.controller.restart(samePort: true)
            let resumed = try await mesh.status("orders-v2")
            #expect(resumed["phase"] as? String == "Paused" && resumed["step"] as? Int == 3, "\(resumed)")

            let promoted = try await mesh.ctl(["rollout", "promote", "orders-v2"])
            #expect(promoted.exitCode == 0 && promoted.output.contains("weights  v1 20%, v2 80%"), "\(promoted.output)")
            let done = try await eventually(seconds: 30) {
                try await mesh.status("orders-v2")["phase"] as? String == "Promoted"
            }
            let final = try await mesh.rollout("orders-v2")
            #expect(done, "\(final)")
            #expect(try await mesh.weights("orders-v2") == [0, 100])
            // `status -w` follows it until it ends (here: it has ended, so it prints and exits).
            let followed = try await mesh.ctl(["rollout", "status", "-w", "orders-v2"])
            #expect(followed.exitCode == 0 && followed.output.contains("phase    Promoted"), "\(followed.output)")
            let shown = try await mesh.ctl(["rollout", "status", "orders-v2"])
            #expect(shown.output.contains("phase    Promoted") && shown.output.contains("v2 100%"), "\(shown.output)")
            // Every request of the load succeeded (below), and v2 takes them all now.
            await load.stop()
            let before = mesh.v2.requestCount
            _ = try await Curl.run([mesh.url + "/?n=[1-20]"])
            #expect(mesh.v2.requestCount - before == 20)
        } catch {
            Issue.record("\(error)")
        }
        await load.stop()
        let counts = load.counts
        #expect(counts.sent > 0 && counts.failures == 0, "\(counts)")
        await mesh.stop()
    }

    @Test func aFailingCanaryIsRolledBackWithinAnIntervalAndOnlyItsOwnAnswersFailed() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let mesh = try await Mesh.start()
        mesh.v2.setFailing(500)
        let load = Load(mesh.url)
        var canaryAnswers = 0
        do {
            let v2Before = mesh.v2.requestCount
            let started = ContinuousClock.now
            let applied = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-bad
                service: orders
                stable: v1
                canary: v2
                steps:
                  - setWeight: 50
                  - analysis: {successRate: 90, interval: 2s, minRequests: 5}
                  - setWeight: 100
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            // `ctl rollout status -w` follows it live, from Progressing until it ends.
            let arguments = [
                CLITests.binary, "ctl", "rollout", "status", "-w", "orders-bad", "--controller", mesh.controller.url,
                "--token-file", mesh.controller.dataDirectory + "/token",
            ]
            let follow = Task { try await Command.run(arguments) }
            let degraded = try await eventually(seconds: 20) {
                try await mesh.status("orders-bad")["phase"] as? String == "Degraded"
            }
            let took = ContinuousClock.now - started
            let rolledBack = try await mesh.rollout("orders-bad")
            #expect(degraded, "\(rolledBack)")
            // One 2 s interval, the controller's 1 s beat and the report interval.
            #expect(took < .seconds(6), "\(took)")
            let status = try await mesh.status("orders-bad")
            #expect((status["message"] as? String ?? "").contains("success rate"), "\(status)")
            #expect(try await mesh.weights("orders-bad") == [100, 0])
            // Counted on the controller's /metrics.
            let failed = try await mesh.controller.metric(
                #"meshwork_controller_rollout_analyses_total{result="failed"}"#
            )
            let entered = try await mesh.controller.metric(
                #"meshwork_controller_rollout_transitions_total{phase="Degraded"}"#
            )
            #expect(failed == 1 && entered == 1, "failed \(failed), entered Degraded \(entered)")
            // Within one push every request goes to v1 again.
            #expect(
                try await eventually {
                    let before = mesh.v2.requestCount
                    let answer = try await Curl.run([mesh.url + "/?n=[1-20]"])
                    return mesh.v2.requestCount == before && answer.statusLines.allSatisfy { $0.contains(" 200") }
                }
            )
            canaryAnswers = mesh.v2.requestCount - v2Before
            let followed = try await follow.value
            #expect(followed.exitCode == 0, "\(followed.output)")
            #expect(
                followed.output.contains("phase    Progressing") && followed.output.contains("all traffic on stable")
                    && followed.output.contains("phase    Degraded"),
                "\(followed.output)"
            )
        } catch {
            Issue.record("\(error)")
        }
        await load.stop()
        let counts = load.counts
        // Failures were v2's own answers (each reached v2), none beyond them.
        #expect(counts.failures > 0 && counts.failures <= canaryAnswers, "\(counts), v2 answered \(canaryAnswers)")
        await mesh.stop()
    }

    /// The hooks a scheduler or CI takes part through: a refused pre-rollout hook holds the
    /// rollout before anything moves; accepted pre-rollout and confirm-promotion hooks let it
    /// start and finish; an abort tells the rollback hook.
    @Test func webhooksHoldTheStartAndThePromotionAreCutAtTheirTimeoutAndHearOfARollback() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let mesh = try await Mesh.start()
        let receiver = try await FixtureServer.start("webhook_receiver.py")
        let hooks = "http://127.0.0.1:\(receiver.port("http"))"
        do {
            // A hook slower than its timeout: each try is cut at 300 ms (the answer, a 200,
            // would come after 2 s and accept), tried twice, and the rollout does not start.
            let slow = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-slow
                service: orders
                stable: v1
                canary: v2
                steps: [{setWeight: 50}]
                webhooks: {preRollout: \(hooks)/slow, retries: 1, timeout: 300ms}
                """
            )
            #expect(slow.exitCode == 0, "\(slow.output)")
            let timedOut = try await eventually {
                try await mesh.status("orders-slow")["phase"] as? String == "Aborted"
            }
            let slowStatus = try await mesh.status("orders-slow")
            #expect(timedOut, "\(slowStatus)")
            #expect(try await mesh.weights("orders-slow") == [100, 0])
            #expect(try await mesh.controller.call("DELETE", "/v1/rollouts/orders-slow").status == 200)

            let refused = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-held
                service: orders
                stable: v1
                canary: v2
                steps: [{setWeight: 50}]
                webhooks: {preRollout: \(hooks)/refuse, retries: 1, timeout: 1s}
                """
            )
            #expect(refused.exitCode == 0, "\(refused.output)")
            #expect(
                try await eventually { try await mesh.status("orders-held")["phase"] as? String == "Aborted" }
            )
            let held = try await mesh.status("orders-held")
            #expect((held["message"] as? String ?? "").contains("refused: answered 503"), "\(held)")
            #expect(try await mesh.weights("orders-held") == [100, 0])
            #expect(try await mesh.controller.call("DELETE", "/v1/rollouts/orders-held").status == 200)

            let accepted = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-hooked
                service: orders
                stable: v1
                canary: v2
                steps: [{setWeight: 50}, {pause: {duration: 1s}}]
                webhooks: {preRollout: \(hooks)/accept, confirmPromotion: \(hooks)/accept, rollback: \(hooks)/accept}
                """
            )
            #expect(accepted.exitCode == 0, "\(accepted.output)")
            let promoted = try await eventually {
                try await mesh.status("orders-hooked")["phase"] as? String == "Promoted"
            }
            let final = try await mesh.rollout("orders-hooked")
            #expect(promoted, "\(final)")
            #expect(try await mesh.weights("orders-hooked") == [0, 100])
            #expect(try await mesh.controller.call("DELETE", "/v1/rollouts/orders-hooked").status == 200)

            #expect(
                try await mesh.controller.apply(
                    """
                    kind: Rollout
                    name: orders-dropped
                    service: orders
                    stable: v1
                    canary: v2
                    steps: [{setWeight: 10}, {pause: {}}]
                    webhooks: {rollback: \(hooks)/accept}
                    """
                ).exitCode == 0
            )
            #expect(try await mesh.ctl(["rollout", "abort", "orders-dropped"]).exitCode == 0)

            // What each hook was told, in order (two tries of the refused one).
            var calls: [(String, String, String)] = []
            let told = try await eventually {
                let log = try await Curl.run(["http://127.0.0.1:\(receiver.port("http"))/log"])
                let entries = (try? JSONSerialization.jsonObject(with: log.body) as? [[String: Any]]) ?? []
                calls = entries.map { entry in
                    let body = entry["body"] as? [String: Any] ?? [:]
                    return (
                        entry["path"] as? String ?? "", body["hook"] as? String ?? "", body["rollout"] as? String ?? ""
                    )
                }
                return calls.count >= 7
            }
            #expect(told, "\(calls)")
            #expect(
                calls.map(\.1) == [
                    "preRollout", "preRollout", "preRollout", "preRollout", "preRollout", "confirmPromotion",
                    "rollback",
                ],
                "\(calls)"
            )
            #expect(
                calls.map(\.2) == [
                    "orders-slow", "orders-slow", "orders-held", "orders-held", "orders-hooked", "orders-hooked",
                    "orders-dropped",
                ]
            )
        } catch {
            Issue.record("\(error)")
        }
        await receiver.stop()
        await mesh.stop()
    }

    /// A/B and shadow steps at a running caller: the header route sends matching requests to
    /// the canary, the mirror copies half of the others to it (answered by stable); an
    /// operator's pause holds an analysis and resume measures from then; a controller
    /// restarted mid-analysis measures a new window of its own before it promotes.
    @Test func headerRouteAndMirrorStepsPauseResumeAndARestartMidAnalysisAtARunningCaller() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let mesh = try await Mesh.start()
        do {
            let applied = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-ab
                service: orders
                stable: v1
                canary: v2
                steps:
                  - setHeaderRoute: {match: [{name: x-beta, value: "1"}]}
                  - mirror: {percent: 50}
                  - pause: {}
                  - analysis: {successRate: 95, interval: 4s, minRequests: 5}
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await mesh.status("orders-ab")["phase"] as? String == "Paused")
            // The header route: every x-beta request to v2, none to v1.
            #expect(
                try await eventually {
                    try await Curl.run(["-H", "x-beta: 1", mesh.url + "/"]).text == "hello from orders-2\n"
                }
            )
            var before = (mesh.v1.requestCount, mesh.v2.requestCount)
            let beta = try await Curl.run(["-H", "x-beta: 1", mesh.url + "/?n=[1-10]"])
            #expect(beta.statusLines.filter { $0.contains(" 200") }.count == 10)
            #expect(mesh.v2.requestCount - before.1 == 10 && mesh.v1.requestCount == before.0)
            // The mirror: the others answered by v1, half of them copied to v2.
            #expect(
                try await eventually {
                    let copies = mesh.v2.requestCount
                    _ = try await Curl.run([mesh.url + "/?n=[1-2]"])
                    return try await eventually(seconds: 2) { mesh.v2.requestCount > copies }
                }
            )
            before = (mesh.v1.requestCount, mesh.v2.requestCount)
            let plain = try await Curl.run([mesh.url + "/?n=[1-20]"])
            #expect(plain.text == String(repeating: "hello from orders-1\n", count: 20), "\(plain.text)")
            #expect(mesh.v1.requestCount - before.0 == 20)
            #expect(
                try await eventually { mesh.v2.requestCount - before.1 == 10 },
                "\(mesh.v2.requestCount - before.1)"
            )

            // Past the pause, into the analysis; an operator pauses it and nothing is decided
            // while paused (mirrored load goes on), then resumes it.
            let load = Load(mesh.url)
            #expect(try await mesh.ctl(["rollout", "promote", "orders-ab"]).exitCode == 0)
            let paused = try await mesh.ctl(["rollout", "pause", "orders-ab"])
            #expect(paused.exitCode == 0 && paused.output.contains("phase    Paused"), "\(paused.output)")
            try await Task.sleep(for: .seconds(5))  // (longer than the interval: nothing may happen)
            let held = try await mesh.status("orders-ab")
            #expect(held["phase"] as? String == "Paused" && held["step"] as? Int == 3, "\(held)")
            let resumed = try await mesh.ctl(["rollout", "resume", "orders-ab"])
            #expect(resumed.exitCode == 0 && resumed.output.contains("phase    Progressing"), "\(resumed.output)")
            // Restarted within the window: the new controller measures a window of its own.
            await mesh.controller.stop()
            try await mesh.controller.restart(samePort: true)
            let promoted = try await eventually(seconds: 30) {
                try await mesh.status("orders-ab")["phase"] as? String == "Promoted"
            }
            await load.stop()
            let final = try await mesh.status("orders-ab")
            #expect(promoted, "\(final)")
            let messages = (final["history"] as? [[String: Any]] ?? []).compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.contains("paused by an operator") }, "\(messages)")
            #expect(messages.contains { $0.contains("resumed by an operator") }, "\(messages)")
            #expect(messages.contains { $0.contains("analysis window begun again") }, "\(messages)")
            let counts = load.counts
            #expect(counts.sent > 0 && counts.failures == 0, "\(counts)")
        } catch {
            Issue.record("\(error)")
        }
        await mesh.stop()
    }

    /// `analysis.route` judges one rule of the rollout's route by its callers' view of that
    /// rule's share to the canary: with the header route's calls all answered and the
    /// split's canary share all failing (the canary as a whole at about 67%), a header
    /// analysis promotes and a canary-rule analysis rolls back.
    @Test func aPerRouteAnalysisJudgesOnlyItsRulesShareOfTheCanary() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let v1 = try await TestMesh.startApp("orders-1")
        let v2 = try await TestMesh.startApp("orders-2")
        let webApp = try await TestMesh.startApp("web-1")
        var sidecars: [SidecarProcess] = []
        var load: Task<Void, Never>?
        defer { controller.remove() }
        do {
            let telemetry = ["--telemetry-interval", "200ms"]
            for (app, version) in [(v1, "v1"), (v2, "v2")] {
                sidecars.append(
                    try await startServer(
                        "orders",
                        app: app,
                        controller: controller,
                        extra: ["--version", version] + telemetry
                    )
                )
            }
            // The caller is an instance of its own, so its outbound edges are reported.
            let web = try await startServer(
                "web",
                app: webApp,
                controller: controller,
                extra: ["--upstream", "orders=127.0.0.1:0"] + telemetry
            )
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let url = web.upstreamURL("orders")
            func status(_ name: String) async throws -> [String: Any] {
                let answer = try await controller.call("GET", "/v1/rollouts/\(name)")
                return
                    ((try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any])?["status"]
                    as? [String: Any]) ?? [:]
            }
            // Header calls answered 200, the others 500 (bounded: 2 minutes at most).
            load = Task {
                let deadline = ContinuousClock.now + .seconds(120)
                while !Task.isCancelled, ContinuousClock.now < deadline {
                    _ = try? await Curl.run(["-H", "x-beta: 1", url + "/?n=[1-10]"])
                    _ = try? await Curl.run([url + "/status/500?n=[1-10]"])
                }
            }
            func rollout(_ name: String, route: String) -> String {
                """
                kind: Rollout
                name: \(name)
                service: orders
                stable: v1
                canary: v2
                steps:
                  - setHeaderRoute: {match: [{name: x-beta, value: "1"}]}
                  - setWeight: 50
                  - analysis: {route: \(route), successRate: 95, interval: 2s, minRequests: 5}
                """
            }
            #expect(try await controller.apply(rollout("orders-hdr", route: "header")).exitCode == 0)
            let promoted = try await eventually(seconds: 30) {
                try await status("orders-hdr")["phase"] as? String == "Promoted"
            }
            let header = try await status("orders-hdr")
            #expect(promoted, "\(header)")
            let figures = header["figures"] as? [String: Any] ?? [:]
            #expect(figures["successRate"] as? Double == 100 && (figures["requests"] as? Int ?? 0) >= 5, "\(figures)")
            // (The canary did answer the split's calls, with 500s.)
            let v2Failures = try await Self.sum(sidecars[1], #"direction="inbound""#, class: "5xx")
            #expect(v2Failures > 0, "the canary answered none of the split's calls")

            #expect(try await controller.apply(rollout("orders-cnr", route: "canary")).exitCode == 0)
            let degraded = try await eventually(seconds: 30) {
                try await status("orders-cnr")["phase"] as? String == "Degraded"
            }
            let canary = try await status("orders-cnr")
            #expect(degraded, "\(canary)")
            #expect((canary["message"] as? String ?? "").contains("success rate 0%"), "\(canary)")
        } catch {
            Issue.record("\(error)")
        }
        load?.cancel()
        await load?.value
        for sidecar in sidecars { await sidecar.stop() }
        await v1.stop()
        await v2.stop()
        await webApp.stop()
        await controller.stop()
    }

    /// A sidecar's `meshwork_edge_requests_total` samples naming `selector` and `class`.
    private static func sum(_ sidecar: SidecarProcess, _ selector: String, class: String) async throws -> Double {
        let text = try await Curl.get("http://127.0.0.1:\(sidecar.port("admin") ?? 0)/metrics").text
        return text.split(separator: "\n").filter {
            $0.hasPrefix("meshwork_edge_requests_total{") && $0.contains(selector)
                && $0.contains("class=\"\(`class`)\"")
        }.compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
    }

    @Test func noTrafficIsInconclusiveNeverAVerdictAndAbortReturnsAllToStableInOnePush() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let mesh = try await Mesh.start()
        do {
            let applied = try await mesh.controller.apply(
                """
                kind: Rollout
                name: orders-idle
                service: orders
                stable: v1
                canary: v2
                inconclusiveLimit: 1
                steps:
                  - setWeight: 30
                  - analysis: {successRate: 99, interval: 1s, minRequests: 5}
                  - setWeight: 100
                """
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            let held = try await eventually(seconds: 20) {
                try await mesh.status("orders-idle")["phase"] as? String == "Paused"
            }
            let status = try await mesh.status("orders-idle")
            #expect(held, "\(status)")
            #expect((status["message"] as? String ?? "").contains("inconclusive"), "\(status)")
            let phases = (status["history"] as? [[String: Any]] ?? []).compactMap { $0["phase"] as? String }
            #expect(!phases.contains("Degraded") && !phases.contains("Promoted"), "\(phases)")
            #expect(status["step"] as? Int == 1 && status["weight"] as? Int == 30)

            // A second rollout of the same service is refused while this one holds it.
            let second = try await mesh.controller.call(
                "PUT",
                "/v1/rollouts/other",
                body: "service: orders\nstable: v1\ncanary: v3\nsteps: [{setWeight: 10}]"
            )
            #expect(second.status == 409, "\(second.text)")
            let aborted = try await mesh.ctl(["rollout", "abort", "orders-idle"])
            #expect(aborted.exitCode == 0 && aborted.output.contains("phase    Aborted"), "\(aborted.output)")
            #expect(try await mesh.weights("orders-idle") == [100, 0])
            // `retry` starts an aborted rollout over (its weight again), `abort` ends it again.
            let retried = try await mesh.ctl(["rollout", "retry", "orders-idle"])
            #expect(retried.exitCode == 0 && retried.output.contains("v2 30%"), "\(retried.output)")
            #expect(try await mesh.weights("orders-idle") == [70, 30])
            #expect(try await mesh.ctl(["rollout", "abort", "orders-idle"]).exitCode == 0)
            #expect(try await mesh.weights("orders-idle") == [100, 0])
            #expect(
                try await eventually {
                    let before = mesh.v2.requestCount
                    let answer = try await Curl.run([mesh.url + "/?n=[1-20]"])
                    return mesh.v2.requestCount == before
                        && answer.statusLines.filter { $0.contains(" 200") }.count == 20
                }
            )

            // Refused: a rollout whose route another route would shadow (it takes every request).
            #expect(
                try await mesh.controller.apply(
                    "kind: HTTPRoute\nname: orders-all\nparentRefs: [{name: orders}]\nrules: [{timeouts: {request: 5s}}]"
                ).exitCode == 0
            )
            let shadowed = try await mesh.controller.call(
                "PUT",
                "/v1/rollouts/shadowed",
                body: "service: orders\nstable: v1\ncanary: v2\nsteps: [{setWeight: 10}]"
            )
            #expect(shadowed.status == 409 && shadowed.text.contains("orders-all"), "\(shadowed.text)")
            #expect(try await mesh.controller.call("DELETE", "/v1/routes/orders-all").status == 200)

            // A canary with no instance gets no share while it has none, whatever the step
            // says: its weight stays with stable, and nothing fails.
            let v3 = try await mesh.controller.apply(
                "kind: Rollout\nname: orders-v3\nservice: orders\nstable: v1\ncanary: v3\nsteps: [{setWeight: 50}, {pause: {}}]"
            )
            #expect(v3.exitCode == 0, "\(v3.output)")
            let v3Status = try await mesh.status("orders-v3")
            #expect(v3Status["weight"] as? Int == 50 && v3Status["phase"] as? String == "Paused", "\(v3Status)")
            #expect(try await mesh.weights("orders-v3") == [100, 0])
            let calls = try await Curl.run([mesh.url + "/?n=[1-20]"])
            #expect(calls.statusLines.filter { $0.contains(" 200") }.count == 20, "\(calls.statusLines)")
            #expect(try await mesh.controller.call("DELETE", "/v1/rollouts/orders-v3").status == 200)
            #expect(try await mesh.controller.call("GET", "/v1/routes/rollout-orders-v3").status == 404)
        } catch {
            Issue.record("\(error)")
        }
        await mesh.stop()
    }
}

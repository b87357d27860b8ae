import Foundation
import MeshworkDemo
import MeshworkModel
import MeshworkTraffic
import NIOCore
import Testing

/// The cluster's balancer with real endpoints: peak-EWMA P2C (the default) steers away
/// from a slow instance; round robin, when configured, does not.
@Suite("Load balancing end to end", .serialized)
struct BalancerTests {
    private func run(_ balancer: BalancerAlgorithm) async throws -> (fast: Int, slow: Int) {
        let fast = try await DemoApp.start(name: "fast", group: TestMesh.group)
        // Far slower than any scheduling hiccup of the fast one on a loaded machine: one
        // 60 ms stall of the fast app would otherwise make it look the slower (peak-EWMA
        // keeps a peak for seconds, by design).
        let slow = try await DemoApp.start(name: "slow", responseDelay: .milliseconds(150), group: TestMesh.group)
        var cluster = TestMesh.cluster("orders", .http1, [fast.address, slow.address])
        cluster.balancer = balancer
        let sidecar = try await TestMesh.startClientSide(cluster: cluster)
        // 40 requests on one keep-alive connection, so one event loop's balancer decides.
        let result = try await Curl.run([sidecar.url("upstream:orders", "/[1-40]")], timeout: 30)
        #expect(result.exitCode == 0)
        let counts = (fast.requestCount, slow.requestCount)
        await sidecar.stop()
        await fast.stop()
        await slow.stop()
        return counts
    }

    @Test func peakEWMASteersAwayFromASlowInstance() async throws {
        let (fast, slow) = try await run(.peakEWMA)
        #expect(fast + slow == 40)
        // Round robin gives it 20; stalls of the fast app on a loaded machine (the suites run
        // in parallel) may cost a few: 9 was seen once. Under 30% is clearly steering.
        #expect(slow <= 12, "the slow instance got \(slow) of 40")
    }

    /// Through a controller, identical instances under a steady load each get at least half
    /// a fair share, and a fourth that registers under that load takes requests within a
    /// second: before, it started at a fixed 30 ms estimate against the others' ~1 ms and
    /// got nothing until that had decayed (about 30 s).
    @Test func identicalInstancesShareTheLoadAndOneThatJoinsServesWithinASecond() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        var apps: [DemoApp] = []
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            for index in 1...3 {
                let app = try await TestMesh.startApp("orders-\(index)")
                apps.append(app)
                sidecars.append(try await startServer("orders", app: app, controller: controller))
            }
            let web = try await startClient("web", calling: "orders", controller: controller)
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            // Every instance is known before the measured load begins.
            for _ in 0..<100 where apps.contains(where: { $0.requestCount == 0 }) {
                _ = try await Curl.get(web.upstreamURL("orders") + "/")
            }
            let url = web.upstreamURL("orders") + "/"
            let before = apps.map(\.requestCount)
            let steady = try await Command.run(["h2load", "--h1", "-D", "4", "-c", "2", url])
            #expect(steady.exitCode == 0, "\(steady.output)")
            let served = zip(apps, before).map { $0.requestCount - $1 }
            let total = served.reduce(0, +)
            #expect(total > 300, "\(steady.output)")
            for count in served {
                #expect(Double(count) >= Double(total) / 3 / 2, "shares \(served) of \(total)")
            }

            // A fourth instance registers while the load runs (8 s at most).
            async let load = Command.run(["h2load", "--h1", "-D", "8", "-c", "2", url])
            let fourth = try await TestMesh.startApp("orders-4")
            apps.append(fourth)
            let joined = try await startServer("orders", app: fourth, controller: controller)
            sidecars.append(joined)
            let registered = ContinuousClock.now
            var firstRequest: Duration?
            while firstRequest == nil, ContinuousClock.now - registered < .seconds(2) {
                if fourth.requestCount > 0 { firstRequest = ContinuousClock.now - registered }
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(
                firstRequest != nil && firstRequest! < .seconds(1),
                "first request after \(String(describing: firstRequest))"
            )
            // And it takes a share at once: at least a third of a fair one over the 2 s from
            // its first request (a 30 ms start against ~3 ms peers gave it 7 of 1237, next to
            // nothing, for seconds). Measured: about half of a fair share (120 of 912, 143 of
            // 1031): its first samples include its new connection's handshake. Counted from
            // its first request, not its registration: how fast the caller learns of it is
            // the claim above, this one is the balancer's.
            let countsAtJoin = apps.map(\.requestCount)
            try await Task.sleep(for: .seconds(2))
            let sinceJoin = zip(apps, countsAtJoin).map { $0.requestCount - $1 }
            let inWindow = sinceJoin.reduce(0, +)
            #expect(
                Double(sinceJoin[3]) >= Double(inWindow) / 4 / 3,
                "the fourth served \(sinceJoin[3]) of \(inWindow) in its first 2 s: \(sinceJoin)"
            )
            let finished = try await load
            #expect(finished.exitCode == 0, "\(finished.output)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        for app in apps { await app.stop() }
        await controller.stop()
    }

    /// Zone-aware routing counts the instances the registry reports unhealthy (issue 17,
    /// item 4): web in zone a, whose one healthy orders instance is all that is left of
    /// four, sends most of its calls to zone b. Before, the unhealthy instances were not
    /// counted at all, so zone a looked whole and kept every call on its last instance.
    @Test func aZoneThatLostMostOfItsInstancesSpillsToTheOtherZone() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let inA = try await TestMesh.startApp("orders-a")
        let inB = try await TestMesh.startApp("orders-b")
        var sidecars: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            sidecars.append(try await startServer("orders", app: inA, controller: controller, extra: ["--zone", "a"]))
            sidecars.append(try await startServer("orders", app: inB, controller: controller, extra: ["--zone", "b"]))
            for index in 1...3 {
                let put = try await controller.call(
                    "PUT",
                    "/v1/instances/orders-a-down-\(index)",
                    body: #"""
                        {"service": "orders", "address": "127.0.0.1", "port": \#(TestMesh.refusingPort),
                         "zone": "a", "health": "unhealthy", "ttlSeconds": 0}
                        """#
                )
                #expect(put.status == 200 || put.status == 201, "\(put.text)")
            }
            let web = try await startClient("web", calling: "orders", controller: controller, extra: ["--zone", "a"])
            sidecars.append(web)
            #expect(try await web.waitUntilServing("orders"), "\(web.log)")
            let before = (inA.requestCount, inB.requestCount)
            // 200 calls on one keep-alive connection: one event loop's balancer decides.
            let result = try await Curl.run([web.upstreamURL("orders") + "/[1-200]"], timeout: 30)
            #expect(result.exitCode == 0)
            let (a, b) = (inA.requestCount - before.0, inB.requestCount - before.1)
            #expect(a + b == 200)
            // 1.4 x 1/4 = 35% stays in zone a, 65% goes to b.
            #expect(b >= 100 && a >= 40, "zone a \(a), zone b \(b)")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        await inA.stop()
        await inB.stop()
        await controller.stop()
    }

    /// Deterministic subsetting fed by the controller (issue 17, item 3): `subsetSize: 8` in
    /// the service policy, 10 callers (each placed by its rank among web's instances) over 40
    /// backends: every backend gets traffic and no caller talks to more than 8.
    @Test func tenCallersOverFortyBackendsEachTalkToAtMostEightAndAllAreUsed() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        let backends = try await FixtureServer.start("h2_backends.py", ["40"])
        var callers: [SidecarProcess] = []
        defer { controller.remove() }
        do {
            for index in 0..<40 {
                let put = try await controller.call(
                    "PUT",
                    "/v1/instances/orders-\(index)",
                    body:
                        #"{"service": "orders", "address": "127.0.0.1", "port": \#(backends.port("b\(index)")), "ttlSeconds": 0}"#
                )
                #expect(put.status == 200 || put.status == 201, "\(put.text)")
            }
            for _ in 0..<10 {
                let caller = try await SidecarProcess.start(
                    [
                        "--service", "web", "--app-port", String(TestMesh.refusingPort), "--controller",
                        controller.url, "--token-file", controller.dataDirectory + "/token", "--ttl", "30s",
                        "--upstream", "orders=127.0.0.1:0",
                    ],
                    waitFor: ["upstream:orders", "inbound"]
                )
                callers.append(caller)
                #expect(try await caller.waitForLog("registered"), "\(caller.log)")
            }
            // The policy last: every caller applies it knowing all ten (its log names the
            // revision of the change).
            let put = try await controller.call("PUT", "/v1/services/orders", body: #"{"policy": {"subsetSize": 8}}"#)
            let revision = try #require(put.header("x-meshwork-revision"))
            for caller in callers {
                #expect(
                    try await caller.waitForLog("revision=\(revision) "),
                    "\(caller.log.split(separator: "\n").suffix(3))"
                )
            }
            for caller in callers {
                let result = try await Curl.run([caller.upstreamURL("orders") + "/[1-80]"], timeout: 30)
                #expect(result.exitCode == 0, "\(result.stderr)")
            }
            // Per caller: the backends it sent to.
            for caller in callers {
                let metrics = try await Curl.get("http://127.0.0.1:\(caller.port("admin") ?? 0)/metrics").text
                let used = Set(
                    metrics.split(separator: "\n").filter {
                        $0.hasPrefix(#"meshwork_endpoint_requests_total{cluster="orders""#) && !$0.hasSuffix(" 0")
                    }.compactMap { line -> Substring? in
                        guard let start = line.range(of: "endpoint=\"") else { return nil }
                        return line[start.upperBound...].prefix { $0 != "\"" }
                    }
                )
                #expect(!used.isEmpty && used.count <= 8, "a caller used \(used.count) backends: \(used.sorted())")
            }
            // Every backend got traffic.
            let counts = try await Curl.get("http://127.0.0.1:\(backends.port("control"))/counts")
            let perBackend = try JSONSerialization.jsonObject(with: Data(counts.text.utf8)) as? [String: [String: Int]]
            let idle = (perBackend ?? [:]).filter { ($0.value["requests"] ?? 0) == 0 }.keys.sorted()
            #expect(perBackend?.count == 40 && idle.isEmpty, "backends without traffic: \(idle)")
        } catch {
            Issue.record("\(error)")
        }
        for caller in callers { await caller.stop() }
        await backends.stop()
        await controller.stop()
    }

    @Test func roundRobinSplitsEvenly() async throws {
        let (fast, slow) = try await run(.roundRobin)
        #expect(fast == 20 && slow == 20)
    }
}

import Foundation
import MeshworkDemo
import Testing

/// Issue 20's load test: three controllers on a 3-member etcd, twenty sidecars,
/// registrations, policy writes, heartbeats, watches and traffic running, and the leader
/// SIGKILLed in the middle of it.
@Suite("Controllers on etcd under load", .serialized)
struct EtcdControllersLoadTests {
    /// What the writers were told landed: every name a controller answered 200 for.
    actor Acknowledged {
        var instances: [String] = []
        var policies: [String] = []
        var refused = 0
        func instance(_ name: String) { instances.append(name) }
        func policy(_ name: String) { policies.append(name) }
        func failed() { refused += 1 }
    }

    /// Requests through the callers' sidecars: how many, and how many did not answer 200.
    actor Traffic {
        var sent = 0
        var failed: [String] = []
        func record(_ codes: [String]) {
            sent += codes.count
            failed += codes.filter { $0 != "200" }
        }
    }

    /// One controller as the writers see it (Sendable: the test's processes are not).
    struct Endpoint: Sendable {
        var url: String
        var caFile: String
        var token: String

        func call(_ method: String, _ path: String, body: String) async -> Int {
            let answer = try? await Curl.run(
                [
                    "-X", method, "--cacert", caFile, "-H", "Authorization: Bearer \(token)",
                    "-H", "content-type: application/json", "--data-binary", body, url + path,
                ],
                timeout: 5
            )
            return answer?.status ?? 0
        }
    }

    /// SIGKILL the leader under load: no acknowledged registration or policy is missing
    /// from etcd or from either survivor afterwards; one survivor leads within twice the
    /// 2 s election lease; instances registered without heartbeats expire exactly once on
    /// each survivor; the callers' sidecars answer every request throughout (none
    /// failed), no serving instance's lease lapsed during the failover, and a new instance
    /// registered afterwards (its sidecar given the dead controller first) takes traffic
    /// from every caller.
    @Test func threeControllersTwentySidecarsKilledLeaderLosesNoAcknowledgedWrite() async throws {
        let etcd = try await EtcdCluster.start()
        let prefix = "/test-\(UUID().uuidString)"
        var controllers: [ControllerProcess] = []
        var sidecars: [SidecarProcess] = []
        var apps: [DemoApp] = []
        var load: [Task<Void, Never>] = []
        do {
            for name in ["a", "b", "c"] {
                controllers.append(
                    try await ControllerProcess.start([
                        "--store", etcd.store, "--etcd-prefix", prefix, "--name", name, "--election-ttl", "2s",
                    ])
                )
            }
            let endpoints = controllers.map { Endpoint(url: $0.url, caFile: $0.caFile, token: $0.token) }
            /// The controllers for sidecar `n`: all three, starting at a different one.
            func rotated(_ n: Int) -> String {
                (0..<3).map { controllers[(n + $0) % 3].url }.joined(separator: ",")
            }

            // Sixteen orders instances, each with its sidecar; four callers.
            for n in 0..<16 {
                let app = try await TestMesh.startApp("orders-\(n)")
                apps.append(app)
                sidecars.append(
                    try await SidecarProcess.start(
                        [
                            "--service", "orders", "--app-port", String(app.port), "--controller", rotated(n),
                            "--join-token-file", try await controllers[n % 3].joinTokenFile("orders"),
                            "--ttl", "3s",
                        ],
                        waitFor: ["inbound", "admin"]
                    )
                )
            }
            var callers: [SidecarProcess] = []
            for n in 0..<4 {
                let caller = try await SidecarProcess.start(
                    [
                        "--service", "web", "--controller", rotated(n), "--upstream", "orders=127.0.0.1:0",
                        "--join-token-file", try await controllers[n % 3].joinTokenFile("web"),
                    ],
                    waitFor: ["upstream:orders"]
                )
                callers.append(caller)
                sidecars.append(caller)
            }
            let registered = try await eventually(seconds: 20) {
                for controller in controllers {
                    let listed = try await controller.call("GET", "/v1/instances?service=orders")
                    let instances = try? JSONSerialization.jsonObject(with: listed.body) as? [[String: Any]]
                    guard instances?.count == 16 else { return false }
                }
                return true
            }
            #expect(registered, "16 orders instances on every controller")
            for caller in callers { #expect(try await caller.waitUntilServing("orders")) }

            // The load: three writers (instances, and a policy every fifth), each through
            // the controllers in turn; traffic through every caller.
            let acknowledged = Acknowledged()
            let traffic = Traffic()
            for writer in 0..<3 {
                load.append(
                    Task {
                        for n in 0..<400 where !Task.isCancelled {
                            let endpoint = endpoints[(writer + n) % 3]
                            let name = "load-\(writer)-\(n)"
                            let instance =
                                #"{"service": "ledger", "address": "127.0.0.1", "port": \#(9000 + n), "ttlSeconds": 0}"#
                            if await endpoint.call("PUT", "/v1/instances/\(name)", body: instance) == 200 {
                                await acknowledged.instance(name)
                            } else {
                                await acknowledged.failed()
                            }
                            guard n % 5 == 0 else { continue }
                            let policy = #"{"target": "ledger", "from": ["spiffe://mesh.local/service/\#(name)"]}"#
                            if await endpoint.call("PUT", "/v1/policies/\(name)", body: policy) == 200 {
                                await acknowledged.policy(name)
                            } else {
                                await acknowledged.failed()
                            }
                        }
                    }
                )
            }
            for caller in callers {
                let url = caller.upstreamURL("orders") + "/?n=[1-10]"
                load.append(
                    Task {
                        for _ in 0..<2_000 where !Task.isCancelled {
                            guard
                                let run = try? await Command.run([
                                    "curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code}\n", url,
                                ])
                            else { continue }
                            await traffic.record(run.output.split(separator: "\n").map(String.init))
                        }
                    }
                )
            }
            try await Task.sleep(for: .seconds(3))  // load before the kill (not a wait for a condition)

            // Instances that never heartbeat, registered through the leader just before
            // it dies: their leases run out during the takeover.
            func leadership(_ controller: ControllerProcess) async throws -> [String: Any] {
                let answer = try await controller.call("GET", "/v1/leader")
                return (try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]) ?? [:]
            }
            let leaderName = try #require(try await leadership(controllers[0])["leader"] as? String)
            let leader = controllers[try #require(["a", "b", "c"].firstIndex(of: leaderName))]
            let survivors = controllers.filter { $0 !== leader }
            for n in 0..<5 {
                let ephemeral = #"{"service": "batch", "address": "127.0.0.1", "port": \#(7000 + n), "ttlSeconds": 2}"#
                #expect(try await leader.call("PUT", "/v1/instances/ephemeral-\(n)", body: ephemeral).status == 200)
            }

            let killed = ContinuousClock.now
            await leader.stop(kill: true)
            let tookOver = try await eventually(seconds: 8) {
                var leading = 0
                for survivor in survivors where try await leadership(survivor)["leading"] as? Bool == true {
                    leading += 1
                }
                return leading == 1
            }
            let elapsed = ContinuousClock.now - killed
            #expect(tookOver && elapsed < .seconds(4), "a survivor leads after \(elapsed)")

            let expired = try await eventually(seconds: 10) {
                for survivor in survivors {
                    for n in 0..<5 where try await survivor.call("GET", "/v1/instances/ephemeral-\(n)").status != 404 {
                        return false
                    }
                }
                return true
            }
            #expect(expired, "the instances without heartbeats expired")

            // A new orders instance, its sidecar given the dead controller first: every
            // caller sends it traffic.
            let fresh = try await TestMesh.startApp("orders-fresh")
            apps.append(fresh)
            let deadFirst = ([leader] + survivors).map(\.url).joined(separator: ",")
            sidecars.append(
                try await SidecarProcess.start(
                    [
                        "--service", "orders", "--app-port", String(fresh.port), "--controller", deadFirst,
                        "--join-token-file", try await survivors[0].joinTokenFile("orders"), "--ttl", "3s",
                    ],
                    waitFor: ["inbound", "admin"]
                )
            )
            let freshSidecar = try #require(sidecars.last)
            let freshEndpoint = "127.0.0.1:\(freshSidecar.port("inbound") ?? 0)"
            for (index, caller) in callers.enumerated() {
                // The caller's own count of answers from the new endpoint (the load keeps
                // its traffic going).
                let series =
                    #"meshwork_endpoint_requests_total{cluster="orders",endpoint="\#(freshEndpoint)",class="2xx"}"#
                let reached = try await eventually(seconds: 15) {
                    let scraped = try await Curl.get("http://127.0.0.1:\(caller.port("admin") ?? 0)/metrics")
                    let line = scraped.text.split(separator: "\n").first { $0.hasPrefix(series) }
                    return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0 > 0
                }
                #expect(reached, "caller \(index) sends orders-fresh traffic: \(caller.log.suffix(2000))")
            }

            for task in load { task.cancel() }
            for task in load { await task.value }

            // Every acknowledged write is in etcd, and served by both survivors.
            let instances = await acknowledged.instances
            let policies = await acknowledged.policies
            #expect(
                instances.count > 30 && policies.count > 5,
                "writes acknowledged: \(instances.count), \(policies.count)"
            )
            let storedInstances = Set(try await etcd.names(prefix + "/instance/"))
            let storedPolicies = Set(try await etcd.names(prefix + "/policy/"))
            let lostInstances = instances.filter { !storedInstances.contains($0) }
            let lostPolicies = policies.filter { !storedPolicies.contains($0) }
            #expect(lostInstances.isEmpty && lostPolicies.isEmpty, "lost: \(lostInstances) \(lostPolicies)")
            for survivor in survivors {
                let listed = try await survivor.call("GET", "/v1/instances?service=ledger")
                let served = Set(
                    ((try? JSONSerialization.jsonObject(with: listed.body) as? [[String: Any]]) ?? [])
                        .compactMap { $0["id"] as? String }
                )
                #expect(Set(instances).isSubset(of: served), "\(Set(instances).subtracting(served))")
                let listedPolicies = try await survivor.call("GET", "/v1/policies")
                let servedPolicies = Set(
                    ((try? JSONSerialization.jsonObject(with: listedPolicies.body) as? [[String: Any]]) ?? [])
                        .compactMap { $0["name"] as? String }
                )
                #expect(Set(policies).isSubset(of: servedPolicies), "\(Set(policies).subtracting(servedPolicies))")
            }
            #expect(storedInstances.filter { $0.hasPrefix("ephemeral-") }.isEmpty)

            // Expired exactly once, as each survivor saw it; no serving instance lapsed.
            for survivor in survivors {
                let lines = survivor.log.split(separator: "\n").filter { $0.contains("lease expired") }
                for n in 0..<5 {
                    let count = lines.filter { $0.contains("instance=ephemeral-\(n)") }.count
                    #expect(count == 1, "ephemeral-\(n) expired \(count) times on a survivor")
                }
                #expect(!lines.contains { $0.contains("instance=orders") }, "\(lines)")
            }
            let sent = await traffic.sent
            let failed = await traffic.failed
            #expect(sent > 100 && failed.isEmpty, "\(failed.count) of \(sent) requests failed: \(failed.prefix(10))")
        } catch {
            Issue.record("\(error)")
        }
        for task in load { task.cancel() }
        for task in load { await task.value }
        for sidecar in sidecars { await sidecar.stop() }
        for app in apps { await app.stop() }
        for controller in controllers {
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }
}

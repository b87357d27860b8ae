import Foundation
import MeshworkDemo
import Testing

/// Several controllers on one real etcd cluster (issue 20): they serve one registry, one
/// leads, and a leader that is killed is replaced.
@Suite("Controllers on etcd end to end", .serialized)
struct EtcdControllersTests {
    /// Two controllers, a 3-member etcd: what one is told the other serves; an instance
    /// whose heartbeats (through the other) go on stays while one whose heartbeats
    /// stopped expires, once, for both; the leader SIGKILLed is replaced within twice the
    /// election lease, and the survivor keeps everything acknowledged before.
    @Test func twoControllersShareTheRegistryAndAKilledLeaderIsReplaced() async throws {
        let etcd = try await EtcdCluster.start()
        let prefix = "/test-\(UUID().uuidString)"
        func controller(_ name: String) async throws -> ControllerProcess {
            try await ControllerProcess.start([
                "--store", etcd.store, "--etcd-prefix", prefix, "--name", name, "--election-ttl", "2s",
            ])
        }
        var controllers: [ControllerProcess] = []
        do {
            controllers.append(try await controller("a"))
            controllers.append(try await controller("b"))
            let (a, b) = (controllers[0], controllers[1])
            func leadership(_ controller: ControllerProcess) async throws -> [String: Any] {
                let answer = try await controller.call("GET", "/v1/leader")
                return (try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]) ?? [:]
            }
            // One leads, and both say which.
            let settled = try await eventually(seconds: 10) {
                let (first, second) = (try await leadership(a), try await leadership(b))
                let leading = [first["leading"] as? Bool, second["leading"] as? Bool]
                return leading.filter { $0 == true }.count == 1 && first["leader"] as? String != nil
                    && first["leader"] as? String == second["leader"] as? String
            }
            #expect(settled)
            #expect(try await leadership(a)["store"] as? String == "etcd")

            // Registered through a: served by b, at the same revision.
            let registered = try await a.call(
                "PUT",
                "/v1/instances/orders-1",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8001, "ttlSeconds": 2}"#
            )
            #expect(registered.status == 200)
            let staying = try await b.call(
                "PUT",
                "/v1/instances/orders-2",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8002, "ttlSeconds": 3}"#
            )
            #expect(staying.status == 200)
            let revision = Int(staying.header("x-meshwork-revision") ?? "") ?? 0
            #expect(revision > Int(registered.header("x-meshwork-revision") ?? "") ?? Int.max)
            #expect(try await b.call("GET", "/v1/instances/orders-1").status == 200)
            let watched = try await Curl.run([
                "-N", "--max-time", "2", "-H", "Authorization: Bearer \(b.token)",
                b.url + "/v1/watch?services=orders&revision=\(revision - 1)",
            ])
            #expect(watched.text.contains("orders-2"), "\(watched.text)")

            // orders-2 heartbeats through b; orders-1 stops: it leaves, on both.
            let (heartbeatURL, token) = (b.url + "/v1/instances/orders-2/heartbeat", b.token)
            let heartbeats = Task {
                while !Task.isCancelled {
                    _ = try? await Curl.run(["-X", "POST", "-H", "Authorization: Bearer \(token)", heartbeatURL])
                    try? await Task.sleep(for: .milliseconds(500))
                }
            }
            let expired = try await eventually(seconds: 10) {
                let onA = try await a.call("GET", "/v1/instances/orders-1").status
                let onB = try await b.call("GET", "/v1/instances/orders-1").status
                return onA == 404 && onB == 404
            }
            #expect(expired)
            let expiries = controllers.map { $0.log.components(separatedBy: "lease expired").count - 1 }
            #expect(expiries == [1, 1], "each controller saw orders-1 expire once: \(expiries)")

            // The leader is SIGKILLed: the other leads within twice the 2 s lease.
            let leaderName = try await leadership(a)["leader"] as? String
            let leader = leaderName == "a" ? a : b
            let survivor = leaderName == "a" ? b : a
            let killed = ContinuousClock.now
            await leader.stop(kill: true)
            let tookOver = try await eventually(seconds: 8) {
                try await leadership(survivor)["leading"] as? Bool == true
            }
            let elapsed = ContinuousClock.now - killed
            #expect(tookOver && elapsed < .seconds(4), "took over after \(elapsed)")
            heartbeats.cancel()
            // Everything acknowledged is there, and the survivor takes changes.
            let still = try await survivor.call("GET", "/v1/instances/orders-2")
            #expect(still.status == 200)
            #expect(try await survivor.call("PUT", "/v1/services/payments", body: "{}").status == 200)
        } catch {
            Issue.record("\(error)")
        }
        for controller in controllers {
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }

    /// Sidecars and `ctl` given both controllers: when the one they use is SIGKILLed they
    /// go on through the other, the caller's watch resumes there by its revision, and a
    /// new instance registered through the survivor (the old one deregistered through it)
    /// takes the traffic.
    @Test func sidecarsAndCtlFailOverToAnotherControllerAndFollowChanges() async throws {
        let etcd = try await EtcdCluster.start()
        let prefix = "/test-\(UUID().uuidString)"
        var controllers: [ControllerProcess] = []
        var sidecars: [SidecarProcess] = []
        var apps: [DemoApp] = []
        do {
            for name in ["a", "b"] {
                controllers.append(
                    try await ControllerProcess.start([
                        "--store", etcd.store, "--etcd-prefix", prefix, "--name", name, "--election-ttl", "2s",
                    ])
                )
            }
            let (a, b) = (controllers[0], controllers[1])
            let both = "\(a.url),\(b.url)"
            let first = try await TestMesh.startApp("orders-1")
            apps.append(first)
            let second = try await TestMesh.startApp("orders-2")
            apps.append(second)
            let server = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(first.port), "--controller", both,
                    "--join-token-file", try await a.joinTokenFile("orders"), "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(server)
            #expect(try await server.waitForLog("registered"), "\(server.log)")
            let client = try await SidecarProcess.start(
                [
                    "--service", "web", "--controller", both, "--upstream", "orders=127.0.0.1:0",
                    "--join-token-file", try await a.joinTokenFile("web"),
                ],
                waitFor: ["upstream:orders"]
            )
            sidecars.append(client)
            #expect(try await client.waitUntilServing("orders"))

            await a.stop(kill: true)
            // ctl with the dead controller first still answers, through the other.
            let listed = try await Command.run([
                CLITests.binary, "ctl", "instances", "--controller", both, "--token-file", b.dataDirectory + "/token",
            ])
            #expect(
                listed.exitCode == 0 && listed.output.contains("orders"),
                "\(listed.output)\n\(b.log.suffix(2000))\n\(server.log.suffix(2000))"
            )

            // orders-2 joins through b; orders-1's sidecar leaves (deregistering through b).
            let replacement = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(second.port), "--controller", b.url,
                    "--join-token-file", try await b.joinTokenFile("orders"), "--ttl", "3s",
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(replacement)
            #expect(try await replacement.waitForLog("registered"), "\(replacement.log)")
            await server.stop()
            let followed = try await eventually(seconds: 15) {
                let answers = try await Curl.run([client.upstreamURL("orders") + "/?n=[1-5]"])
                return answers.exitCode == 0 && second.requestCount >= 5 && answers.text.contains("orders-2")
                    && !answers.text.contains("orders-1")
            }
            #expect(followed, "\(client.log.suffix(2000))")
        } catch {
            Issue.record("\(error)")
        }
        for sidecar in sidecars { await sidecar.stop() }
        for app in apps { await app.stop() }
        for controller in controllers {
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }

    /// Telemetry has one home, the leader (which analyses rollouts from it): a report sent
    /// to a follower is relayed there, and a follower answers telemetry reads with the
    /// leader's, so both show every report.
    @Test func telemetrySentToAFollowerReachesTheLeader() async throws {
        let etcd = try await EtcdCluster.start()
        let prefix = "/test-\(UUID().uuidString)"
        var controllers: [ControllerProcess] = []
        do {
            for name in ["a", "b"] {
                controllers.append(
                    try await ControllerProcess.start([
                        "--store", etcd.store, "--etcd-prefix", prefix, "--name", name, "--election-ttl", "2s",
                    ])
                )
            }
            func leads(_ controller: ControllerProcess) async throws -> Bool {
                let answer = try await controller.call("GET", "/v1/leader")
                let object = try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
                return object?["leading"] as? Bool == true
            }
            let someoneLeads = try await eventually(seconds: 10) {
                let first = try await leads(controllers[0])
                let second = try await leads(controllers[1])
                return first || second
            }
            #expect(someoneLeads)
            let leader = try await leads(controllers[0]) ? controllers[0] : controllers[1]
            let follower = leader === controllers[0] ? controllers[1] : controllers[0]
            let instance = #"{"service": "orders", "address": "127.0.0.1", "port": 8001}"#
            #expect(try await follower.call("PUT", "/v1/instances/orders-1", body: instance).status == 200)
            // A sidecar's credential (the store shares it: the leader checks it again).
            let directory = follower.dataDirectory + "-work"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let credential = try await follower.issueWorkload("orders", in: directory, instance: "orders-1").credential
            let report =
                #"{"service": "orders", "seconds": 1, "edges": [{"direction": "inbound", "peer": "web", "classes": [0, 7, 0, 0, 1], "latency": [[1000, 8]]}]}"#
            func requests(_ controller: ControllerProcess) async throws -> Int? {
                let answer = try await controller.call("GET", "/v1/stats?service=orders")
                let object = try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
                let services = object?["services"] as? [[String: Any]]
                return (services?.first?["metrics"] as? [String: Any])?["requests"] as? Int
            }
            // The follower learns where the leader listens from the store: until then it
            // keeps reports itself, so the first one is sent once that is known.
            let relayed = try await eventually(seconds: 10) {
                let sent = try await follower.call(
                    "POST",
                    "/v1/instances/orders-1/telemetry",
                    body: report,
                    bearer: credential
                )
                let count = try await requests(leader) ?? 0
                return sent.status == 204 && count > 0
            }
            #expect(relayed, "\(follower.log.suffix(1500))")
            let onLeader = try await requests(leader) ?? 0
            #expect(onLeader % 8 == 0 && onLeader > 0, "the leader has every report sent to the follower")
            #expect(try await requests(follower) == onLeader, "the follower answers with the leader's figures")
            let direct = try await leader.call(
                "POST",
                "/v1/instances/orders-1/telemetry",
                body: report,
                bearer: credential
            )
            #expect(direct.status == 204)
            #expect(try await requests(leader) == onLeader + 8)
            #expect(try await requests(follower) == onLeader + 8)
        } catch {
            Issue.record("\(error)")
        }
        for controller in controllers {
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }

    /// One etcd member of three down: writes go on. Two down (no quorum): a write is
    /// refused with a 503 that says the store cannot commit, not a hang; reads go on from
    /// the controller's last state.
    @Test func oneEtcdMemberDownIsNothingAndTwoRefuseWritesClearly() async throws {
        let etcd = try await EtcdCluster.start()
        var controller: ControllerProcess?
        do {
            let started = try await ControllerProcess.start([
                "--store", etcd.store, "--etcd-prefix", "/test-\(UUID().uuidString)", "--name", "a",
            ])
            controller = started
            #expect(try await started.call("PUT", "/v1/services/orders", body: "{}").status == 200)
            try await etcd.kill(1)
            let written = try await eventually(seconds: 15) {
                try await started.call("PUT", "/v1/services/payments", body: "{}").status == 200
            }
            #expect(written, "a write with one member of three down")
            try await etcd.kill(2)
            let begun = ContinuousClock.now
            let refused = try await started.call("PUT", "/v1/services/billing", body: "{}")
            let took = ContinuousClock.now - begun
            #expect(refused.status == 503, "\(refused.status) \(refused.text)")
            #expect(refused.text.contains("the store cannot commit"), "\(refused.text)")
            #expect(took < .seconds(20), "refused after \(took)")
            let read = try await started.call("GET", "/v1/services")
            #expect(read.status == 200 && read.text.contains("orders") && read.text.contains("payments"))
            #expect(!read.text.contains("billing"))
        } catch {
            Issue.record("\(error)")
        }
        if let controller {
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }

    /// The leader stepping a rollout is SIGSTOPped past its lease; another leads and goes
    /// on; SIGCONT: none of the old leader's writes lands, it stops leading, and the
    /// rollout goes on from the new leader's steps only. (Which comes first when it wakes,
    /// its next step, refused by the fence, or its renewal, finding the lease gone, is the
    /// scheduler's choice; the fence itself is tested for both stores in
    /// `ControllerStoreTests.aFencedWriteLandsOnlyWhileItsTermLeads`.)
    @Test func aLeaderPausedPastItsLeaseCannotWriteWhenItWakes() async throws {
        let etcd = try await EtcdCluster.start()
        let prefix = "/test-\(UUID().uuidString)"
        var controllers: [ControllerProcess] = []
        do {
            for name in ["a", "b"] {
                controllers.append(
                    try await ControllerProcess.start([
                        "--store", etcd.store, "--etcd-prefix", prefix, "--name", name, "--election-ttl", "2s",
                    ])
                )
            }
            func leads(_ controller: ControllerProcess) async throws -> Bool {
                let answer = try await controller.call("GET", "/v1/leader")
                let object = try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
                return object?["leading"] as? Bool == true
            }
            func step(_ controller: ControllerProcess) async throws -> Int {
                let answer = try await controller.call("GET", "/v1/rollouts/orders-v2")
                let object = try? JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
                return (object?["status"] as? [String: Any])?["step"] as? Int ?? -1
            }
            let someoneLeads = try await eventually(seconds: 10) {
                let first = try await leads(controllers[0])
                let second = try await leads(controllers[1])
                return first || second
            }
            #expect(someoneLeads)
            let leader = try await leads(controllers[0]) ? controllers[0] : controllers[1]
            let other = leader === controllers[0] ? controllers[1] : controllers[0]
            let steps = (1...9).map { "  - setWeight: \($0 * 10)\n  - pause: {duration: 1s}" }.joined(separator: "\n")
            let applied = try await leader.apply(
                "kind: Rollout\nname: orders-v2\nservice: orders\nstable: v1\ncanary: v2\nsteps:\n\(steps)\n"
            )
            #expect(applied.exitCode == 0, "\(applied.output)")
            #expect(try await eventually(seconds: 10) { try await step(other) >= 2 })

            kill(leader.process.processIdentifier, SIGSTOP)
            let replaced = try await eventually(seconds: 8) { try await leads(other) }
            #expect(replaced, "\(other.log.suffix(1500))")
            // The new leader steps the rollout on.
            let before = try await step(other)
            #expect(try await eventually(seconds: 10) { try await step(other) >= before + 2 })
            let mark = leader.log.count
            kill(leader.process.processIdentifier, SIGCONT)
            let stepped = try await eventually(seconds: 8) { try await !leads(leader) }
            #expect(stepped, "\(leader.log.suffix(1500))")
            // A step that landed is logged by the controller that wrote it: none by the
            // old leader after it woke.
            let woke = String(leader.log.dropFirst(mark))
            let landed = woke.split(separator: "\n").filter { $0.hasSuffix("] rollout") }
            #expect(landed.isEmpty, "the woken leader wrote: \(landed)")
            #expect(woke.contains("no longer leading"), "\(woke.suffix(1500))")
            #expect(try await leads(other))
        } catch {
            Issue.record("\(error)")
        }
        for controller in controllers {
            kill(controller.process.processIdentifier, SIGCONT)
            await controller.stop()
            controller.remove()
        }
        await etcd.stop()
    }
}

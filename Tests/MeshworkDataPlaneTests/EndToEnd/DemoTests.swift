import Foundation
import Testing

/// `meshwork demo --duration 30`: the whole mesh in one command. Checked from its output
/// and from its controller's API while it runs, and for what it leaves behind.
@Suite(.serialized) struct DemoTests {
    @Test func demoRunsTheMeshRoutesAroundFaultsAndLeavesNothingBehind() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let directory = NSTemporaryDirectory() + "mw-demo-\(UUID().uuidString)"
        let outputFile = directory + ".out"
        _ = FileManager.default.createFile(atPath: outputFile, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: outputFile)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = [
            // A modest rate: the other suites run beside it on the same cores.
            "demo", "--duration", "30", "--port", "0", "--plain", "--faults-after", "6", "--rate", "20",
            "--data-dir", directory,
        ]
        process.standardOutput = FileHandle(forWritingAtPath: outputFile)
        process.standardError = FileHandle(forWritingAtPath: outputFile)
        try process.run()
        var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }

        // Where everything listens, printed once the mesh serves (bounded: 60 s).
        var api: String?
        var gateway: String?
        for _ in 0..<600 where api == nil || gateway == nil {
            // The API is HTTPS, as every controller's: the demo says which CA file verifies it.
            api = Self.match(#"controller API  (https://127\.0\.0\.1:\d+)"#, in: output)
            gateway = Self.match(#"gateway         (http://127\.0\.0\.1:\d+)/"#, in: output)
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let apiURL = try #require(api, "no controller address in:\n\(output)")
        let caFile = try #require(Self.match(#"--ca-file (\S+) services"#, in: output), "\(output)")
        let gatewayURL = try #require(gateway, "no gateway address in:\n\(output)")
        let call = try await Curl.get(gatewayURL + "/")
        #expect(call.status == 200, "\(call.text)")
        #expect(
            call.text.hasPrefix("web-") && call.text.contains("-> orders-")
                && call.text.contains("-> hello from inventory-")
        )
        // The demo's route: the canary header reaches web's v2 instance, nothing else does.
        let canary = try await Curl.get(gatewayURL + "/", ["-H", "x-demo-canary: 1"])
        #expect(canary.status == 200 && canary.text.hasPrefix("web-2 ->"), "\(canary.text)")
        for _ in 0..<5 {
            let stable = try await Curl.get(gatewayURL + "/")
            #expect(stable.status == 200 && stable.text.hasPrefix("web-1 ->"), "\(stable.text)")
        }
        #expect(output.contains("route           web-canary"), "\(output)")
        let dns = Self.match(#"DNS             127\.0\.0\.1:(\d+)"#, in: output)
        let srv = try await Command.run([
            "dig", "@127.0.0.1", "-p", dns ?? "0", "+short", "_http._tcp.orders.service.mesh", "SRV",
        ])
        // orders v1 (3 instances), v2 and v3: every instance is in DNS; routes decide the traffic.
        #expect(srv.output.split(separator: "\n").count == 5, "\(srv.output)")

        // The failing instance leaves the registry's healthy set while the demo runs.
        var ejected = false
        for _ in 0..<200 where !ejected && process.isRunning {
            let instances = try await Curl.get(apiURL + "/v1/instances?service=inventory", ["--cacert", caFile])
            let list = (try? JSONSerialization.jsonObject(with: instances.body) as? [[String: Any]]) ?? []
            ejected = list.contains { $0["id"] as? String == "inventory-1" && $0["health"] as? String == "unhealthy" }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(ejected, "inventory-1 never became unhealthy:\n\(output)")

        // It ends by itself, cleanly, within its duration (and the stop).
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(output)")
        let text = output

        // Traffic flowed, the faults happened, and the mesh routed around them.
        let total = Int(Self.match(#"summary: (\d+) requests through the gateway"#, in: text) ?? "") ?? 0
        // 40 req/s are offered; a loaded CI machine running a debug build gets fewer through.
        #expect(total > 50, "\(text)")
        let success = Double(Self.match(#"in \d+ s, ([\d.]+)% succeeded"#, in: text) ?? "") ?? 0
        #expect(success >= 95, "\(text)")
        #expect(text.contains("inventory-1: failing since") && text.contains("(ejected"), "\(text)")
        #expect(text.contains("orders-2") && text.contains("faults since"), "\(text)")
        // The view refreshed every second: about 30 frames.
        let frames = text.components(separatedBy: "SERVICE    INSTANCE").count - 1
        #expect((25...32).contains(frames), "\(frames) frames")
        // The rollouts: v2 promoted by its analyses after the demo promoted its first step,
        // then v3 (half its answers 500) rolled back by its first analysis.
        #expect(
            text.contains("rollout orders-v2: Promoted: promoted: all traffic on the canary"),
            "\(text.suffix(1500))"
        )
        #expect(text.contains("rollout orders-v3: Degraded: analysis failed: success rate"), "\(text.suffix(1500))")
        #expect(text.contains("v1 75% / v2 25%") && text.contains("v2 90% / v3 10%"), "the weights, live")
        // The last frame shows inventory-1 getting nothing.
        let lastFrame = text.components(separatedBy: "SERVICE    INSTANCE").last ?? ""
        let failingRow = lastFrame.split(separator: "\n").first { $0.contains("inventory-1") } ?? ""
        #expect(failingRow.contains("unhealthy") && failingRow.split(separator: " ").contains("0"), "\(failingRow)")

        // Nothing left: no child process, no listener.
        let children = try await Command.run(["pgrep", "-P", String(process.processIdentifier)])
        #expect(children.output.isEmpty)
        #expect(try await Curl.get(apiURL + "/v1/services", ["-k"]).status == 0)
        #expect(try await Curl.get(gatewayURL + "/").status == 0)
        #expect(text.contains("meshwork demo: stopped; nothing left running"))
    }

    /// `meshwork demo --ha`: the control plane is three controller processes on a 3-member
    /// etcd; the rollouts are driven by the leader as in the single-controller demo, from
    /// telemetry the sidecars send to a follower (which relays it to the leader); the
    /// leader is SIGKILLed partway, another leads within twice the 2 s election lease, not
    /// one request through the gateway fails in the 10 s after, the killed controller is
    /// started again, and nothing (no controller, no etcd member) is left running.
    @Test func demoHAKillsTheLeaderAndNoRequestFails() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let directory = NSTemporaryDirectory() + "mw-demo-ha-\(UUID().uuidString)"
        let outputFile = directory + ".out"
        _ = FileManager.default.createFile(atPath: outputFile, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: outputFile)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = [
            "demo", "--ha", "--duration", "45", "--port", "0", "--plain", "--faults-after", "6", "--rate", "20",
            "--data-dir", directory,
        ]
        process.standardOutput = FileHandle(forWritingAtPath: outputFile)
        process.standardError = FileHandle(forWritingAtPath: outputFile)
        try process.run()
        var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }
        // Bounded: its 45 s, a minute to start on a loaded machine, and the stop.
        let deadline = ContinuousClock.now + .seconds(150)
        while process.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        let text = output
        #expect(process.terminationStatus == 0, "\(text.suffix(3000))")
        #expect(text.contains("controllers     controller-1..3 on a 3-member etcd"), "\(text.prefix(2000))")
        #expect(text.contains("controllers on etcd: controller-1 (leader), controller-2, controller-3"))

        // The leader drove both rollouts, as one controller does.
        #expect(text.contains("rollout orders-v2: Promoted"), "\(text.suffix(1500))")
        #expect(text.contains("rollout orders-v3: Degraded: analysis failed"), "\(text.suffix(1500))")

        let summary = try #require(
            Self.match(#"(control plane: controller-\d \(the leader\) SIGKILLed at .*)"#, in: text),
            "\(text.suffix(2000))"
        )
        let took = Double(Self.match(#"led ([\d.]+) s later"#, in: summary) ?? "") ?? .infinity
        #expect(took < 4, "another controller led \(took) s after the kill: \(summary)")
        let requests = Int(Self.match(#"the 10 s after, (\d+) requests"#, in: summary) ?? "") ?? 0
        let failed = Int(Self.match(#"requests through the gateway, (\d+) failed"#, in: summary) ?? "") ?? -1
        #expect(requests > 50 && failed == 0, "\(summary)")
        #expect(summary.contains("started again at"), "\(summary)")

        // Nothing left: no child (controllers, etcd members) of the demo, no etcd of its own.
        let children = try await Command.run(["pgrep", "-P", String(process.processIdentifier)])
        #expect(children.output.isEmpty)
        let members = try await Command.run(["pgrep", "-f", directory])
        #expect(members.output.isEmpty, "left running: \(members.output)")
        #expect(text.contains("meshwork demo: stopped; nothing left running"))
    }

    static func match(_ pattern: String, in text: String) -> String? {
        guard let regex = try? NSRegularExpression(pattern: pattern),
            let found = regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
            found.numberOfRanges > 1, let range = Range(found.range(at: 1), in: text)
        else { return nil }
        return String(text[range])
    }
}

import Foundation
import MeshworkDemo
import MeshworkModel
import MeshworkTraffic
import NIOCore
import Testing

/// Outlier ejection, retries and their budget, circuit breakers, inbound rate and
/// concurrency limits and deadline propagation, over real sockets with curl as the client.
@Suite("Traffic management end to end")
struct TrafficTests {
    /// Status codes of every response a multi-URL curl run got, in order.
    private func statuses(_ result: CurlResult) -> [Int] {
        result.statusLines.compactMap { line in
            let parts = line.split(separator: " ")
            return parts.count > 1 ? Int(parts[1]) : nil
        }.filter { $0 >= 200 }
    }

    /// `count` concurrent requests on one HTTP/2 connection (nghttp: curl 7.88 fails to
    /// reuse prior-knowledge h2c connections); the statuses and mesh error reasons seen.
    private func concurrentH2(_ url: String, count: Int) async throws -> (statuses: [Int], errors: [String]) {
        let (_, output) = try await Command.run(["nghttp", "-v", "-n", "-t", "10", "-m", String(count), url])
        var statuses: [Int] = []
        var errors: [String] = []
        for line in output.split(separator: "\n") {
            if let range = line.range(of: ":status: ") { statuses.append(Int(line[range.upperBound...]) ?? 0) }
            if let range = line.range(of: "x-meshwork-error: ") { errors.append(String(line[range.upperBound...])) }
        }
        return (statuses, errors)
    }

    private func withTwoApps(
        configure: (inout ClusterConfig) -> Void,
        _ body: (DemoApp, DemoApp, RunningSidecar) async throws -> Void
    ) async throws {
        let good = try await DemoApp.start(name: "good", group: TestMesh.group)
        let bad = try await DemoApp.start(name: "bad", group: TestMesh.group)
        var cluster = TestMesh.cluster("orders", .http1, [good.address, bad.address])
        cluster.balancer = .roundRobin
        configure(&cluster)
        let sidecar = try await TestMesh.startClientSide(cluster: cluster)
        do {
            try await body(good, bad, sidecar)
        } catch {
            await sidecar.stop()
            await good.stop()
            await bad.stop()
            throw error
        }
        await sidecar.stop()
        await good.stop()
        await bad.stop()
    }

    @Test func aFailingInstanceIsEjectedAndTrafficMoves() async throws {
        try await withTwoApps { cluster in
            cluster.retries.attempts = 0
            cluster.outlierDetection?.consecutive5xx = 3
        } _: { good, bad, sidecar in
            bad.setFailing(500)
            // One keep-alive connection: one event loop's detector sees every answer.
            let result = try await Curl.run([sidecar.url("upstream:orders", "/[1-40]")], timeout: 30)
            let codes = statuses(result)
            #expect(codes.count == 40)
            // Round robin alternates, so the bad instance answers 3 times before it is out.
            #expect(codes.filter { $0 == 500 }.count == 3, "\(codes)")
            #expect(bad.requestCount == 3)
            #expect(good.requestCount == 37)
            #expect(
                sidecar.metric(#"meshwork_cluster_outlier_ejections_total{cluster="orders",reason="consecutive_5xx"}"#)
                    == 1
            )
            #expect(sidecar.metric(#"meshwork_cluster_outlier_ejected_endpoints{cluster="orders"}"#) == 1)
        }
    }

    @Test func retriesHideAFailingInstanceFromTheCaller() async throws {
        try await withTwoApps { _ in
        } _: { good, bad, sidecar in
            bad.setFailing(503)
            let result = try await Curl.run([sidecar.url("upstream:orders", "/[1-20]")], timeout: 30)
            let codes = statuses(result)
            #expect(codes == Array(repeating: 200, count: 20), "\(codes)")
            #expect(good.requestCount == 20)
            let retries = sidecar.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) ?? 0
            #expect(retries == Double(bad.requestCount))
            #expect(retries >= 1)
        }
    }

    @Test func aPostIsNotRetriedOnA500() async throws {
        try await withTwoApps { cluster in
            cluster.outlierDetection = nil
        } _: { _, bad, sidecar in
            bad.setFailing(500)
            let result = try await Curl.run(
                ["-X", "POST", "-d", "x=1", sidecar.url("upstream:orders", "/[1-4]")],
                timeout: 30
            )
            #expect(statuses(result).filter { $0 == 500 }.count == 2)
            #expect(sidecar.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) == 0)
        }
    }

    /// A request the endpoint received and dropped without answering is sent again only if
    /// repeating it is safe: a GET is, a POST is not (the endpoint may have acted on it)
    /// unless the policy says the service's calls are safe to repeat (`nonIdempotent`).
    @Test func aSentPostIsNotRepeatedAfterAResetUnlessThePolicySaysItIsSafe() async throws {
        for (method, nonIdempotent, tries) in [("GET", false, 3), ("POST", false, 1), ("POST", true, 3)] {
            let configure: (inout SidecarConfig) -> Void = { config in
                config.clusters[0].outlierDetection = nil
                config.clusters[0].retries.nonIdempotent = nonIdempotent
                config.clusters[0].retries.backoff = ExponentialBackoff(base: .milliseconds(1), cap: .milliseconds(2))
            }
            try await TestMesh.withAppBehindSidecar(configure: configure) { app, sidecar in
                let result = try await Curl.run(["-X", method, "-d", "x=1", sidecar.url("upstream:orders", "/reset")])
                #expect(result.status == 502, "\(method): \(result.status) \(result.text)")
                #expect(result.header("x-meshwork-error") == "upstream_reset")
                #expect(app.requestCount == tries, "\(method), nonIdempotent \(nonIdempotent)")
                #expect(
                    sidecar.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) == Double(tries - 1),
                    "\(method), nonIdempotent \(nonIdempotent)"
                )
            }
        }
    }

    /// `perTryTimeout` bounds each try even with no retries, and a timed-out try is tried
    /// again only when `per-try-timeout` is one of the policy's conditions.
    @Test func thePerTryTimeoutBoundsEveryTryAndObeysTheConditions() async throws {
        let cases: [(attempts: Int, on: Set<RetryCondition>, tries: Int)] = [
            (0, RetryPolicy().on, 1), (2, [.reset, .unavailable], 1), (2, RetryPolicy().on, 3),
        ]
        for (attempts, conditions, tries) in cases {
            let configure: (inout SidecarConfig) -> Void = { config in
                config.clusters[0].retries.attempts = attempts
                config.clusters[0].retries.on = conditions
                config.clusters[0].retries.perTryTimeout = .milliseconds(200)
                config.clusters[0].retries.backoff = ExponentialBackoff(base: .milliseconds(1), cap: .milliseconds(2))
            }
            try await TestMesh.withAppBehindSidecar(configure: configure) { app, sidecar in
                let started = ContinuousClock.now
                let result = try await Curl.get(sidecar.url("upstream:orders", "/delay/3000"))
                let took = ContinuousClock.now - started
                #expect(result.status == 504, "attempts \(attempts): \(result.status) \(result.text)")
                #expect(result.header("x-meshwork-error") == "upstream_timeout")
                #expect(app.requestCount == tries, "attempts \(attempts), on \(conditions)")
                // Each try gave up at 200 ms, far before the app's 3 s.
                #expect(took < .milliseconds(200 * tries + 1500), "\(took)")
            }
        }
    }

    /// A retried request tells the next hop the time left when it is sent again, not the
    /// time it had at its first try.
    @Test func aRetryCarriesTheTimeLeftNotTheFirstTrysTimeout() async throws {
        let slow = try await TestMesh.startServerSide(service: "orders")
        let healthy = try await TestMesh.startServerSide(service: "orders")
        slow.app.setSlow(.milliseconds(600))
        slow.app.setFailing(503)
        var cluster = TestMesh.cluster(
            "orders",
            .mesh,
            [slow.sidecar.addresses["inbound"], healthy.sidecar.addresses["inbound"]]
        )
        cluster.balancer = .roundRobin
        cluster.outlierDetection = nil
        cluster.requestTimeout = .seconds(3)
        cluster.retries.attempts = 1
        let client = try await TestMesh.startClientSide(cluster: cluster)
        let url = client.url("upstream:orders", "/headers")
        // One connection, three requests, every body on stdout.
        let result = try await Command.run(["curl", "-sS", "--max-time", "10", url, url, url])
        // What the healthy app was told each time (the slow one's 503s were retried).
        let sent = result.output.split(separator: "\n").compactMap { line -> Int? in
            line.hasPrefix("x-meshwork-timeout: ") ? Int(line.dropFirst("x-meshwork-timeout: ".count)) : nil
        }
        #expect(sent.count == 3, "\(result.output)")
        let retries = client.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) ?? 0
        #expect(retries >= 1)
        // A first try goes out with ~3000 ms; a retry after the slow 503 with 600 ms less.
        #expect(sent.allSatisfy { $0 <= 3000 }, "\(sent)")
        #expect(sent.filter { $0 <= 2450 }.count == Int(retries), "\(sent), \(retries) retries")
        await client.stop()
        for side in [slow, healthy] {
            await side.sidecar.stop()
            await side.app.stop()
        }
    }

    @Test func retriesStopWhenTheBudgetIsSpent() async throws {
        let app = try await DemoApp.start(name: "down", group: TestMesh.group)
        app.setFailing(503)
        var cluster = TestMesh.cluster("orders", .http1, [app.address])
        cluster.retries.budgetMinPerSecond = 0
        cluster.retries.budgetRatio = 0.2
        cluster.retries.backoff = ExponentialBackoff(base: .milliseconds(1), cap: .milliseconds(2))
        let sidecar = try await TestMesh.startClientSide(cluster: cluster)
        let result = try await Curl.run([sidecar.url("upstream:orders", "/[1-30]")], timeout: 30)
        #expect(statuses(result) == Array(repeating: 503, count: 30))
        let retries = sidecar.metric(#"meshwork_cluster_retries_total{cluster="orders"}"#) ?? -1
        // 20% of 30 requests: at most 6 retries, where an unbudgeted client would make 60.
        #expect(retries <= 6 && retries >= 1, "retries \(retries)")
        #expect(Double(app.requestCount) == 30 + retries)
        #expect((sidecar.metric(#"meshwork_cluster_retry_budget_exhausted_total{cluster="orders"}"#) ?? 0) > 0)
        await sidecar.stop()
        await app.stop()
    }

    @Test func circuitBreakerAnswers503AtOnce() async throws {
        let app = try await DemoApp.start(name: "slow", responseDelay: .milliseconds(500), group: TestMesh.group)
        var cluster = TestMesh.cluster("orders", .http1, [app.address])
        // Split over the two event loops, rounding up: one request in flight per loop.
        cluster.circuitBreakers.maxRequests = 2
        let sidecar = try await TestMesh.startClientSide(cluster: cluster)
        // Five requests at once on one HTTP/2 connection: one loop, one slot.
        let (codes, errors) = try await concurrentH2(sidecar.url("upstream:orders"), count: 5)
        #expect(codes.filter { $0 == 200 }.count == 1, "\(codes)")
        #expect(codes.filter { $0 == 503 }.count == 4, "\(codes)")
        #expect(errors == Array(repeating: "overflow_requests", count: 4))
        #expect(app.requestCount == 1)
        #expect(
            sidecar.metric(#"meshwork_cluster_errors_total{cluster="orders",reason="overflow_requests"}"#) == 4
        )
        await sidecar.stop()
        await app.stop()
    }

    @Test func inboundRateLimitAnswers429WithoutTouchingTheApp() async throws {
        try await TestMesh.withPair { config in
            // Two loops share the limit: each gets a burst of 2 and 0.5 requests a second.
            config.inbound?.rateLimit = RateLimitConfig(requestsPerSecond: 1, burst: 4)
        } _: { server, client in
            let result = try await Curl.run([client.url("upstream:orders", "/[1-10]")], timeout: 30)
            let codes = statuses(result)
            #expect(codes.count == 10)
            // One mesh connection: one server loop, whose bucket holds two.
            #expect(codes.filter { $0 == 200 }.count == 2, "\(codes)")
            #expect(codes.filter { $0 == 429 }.count == 8, "\(codes)")
            #expect(server.app.requestCount == 2)
            #expect(
                server.sidecar.metric(
                    #"meshwork_listener_mesh_errors_total{listener="inbound",kind="inbound",reason="rate_limited"}"#
                ) == 8
            )
        }
    }

    @Test func inboundConcurrencyLimitShedsExcessFast() async throws {
        try await TestMesh.withPair { config in
            // The sidecar's limit, 4: each of its two event loops holds half (like the
            // breakers), and one mesh connection is served by one loop.
            var limit = GradientLimiterPolicy()
            limit.minConcurrency = 4
            limit.maxConcurrency = 4
            config.inbound?.concurrencyLimit = limit
        } _: { server, client in
            server.app.setSlow(.milliseconds(300))
            let started = ContinuousClock.now
            let (codes, errors) = try await concurrentH2(client.url("upstream:orders"), count: 8)
            #expect(codes.count == 8)
            let shed = codes.filter { $0 == 503 }.count
            // All eight reach the server sidecar on one mesh connection: two at a time
            // go to the app, the rest are refused without reaching it.
            #expect(codes.filter { $0 == 200 }.count == 2, "\(codes)")
            #expect(shed == 6)
            #expect(server.app.requestCount == 2)
            #expect(errors == Array(repeating: "concurrency_limited", count: 6))
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test func deadlinesTravelToTheNextHop() async throws {
        try await TestMesh.withPair { server, client in
            // The far app sees how long the caller will wait (the client cluster's 15 s).
            let headers = try await Curl.get(client.url("upstream:orders", "/headers"))
            let line = headers.text.split(separator: "\n").first { $0.lowercased().hasPrefix("x-meshwork-timeout:") }
            let ms = line.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
            #expect(ms != nil && ms! <= 15_000 && ms! > 14_000, "\(String(describing: line))")

            // A caller with 300 ms left, straight to the server side over mTLS (curl with
            // the web identity): it gives up when the caller does, not after its own 15 s.
            server.app.setSlow(.seconds(3))
            let started = ContinuousClock.now
            let result = try await Curl.get(
                "https://127.0.0.1:\(server.sidecar.port("inbound"))/",
                ["-k", "--cert", TestMesh.cert("web"), "--key", TestMesh.key("web"), "-H", "x-meshwork-timeout: 300"]
            )
            #expect(result.status == 504)
            #expect(result.header("x-meshwork-error") == "upstream_timeout")
            #expect(ContinuousClock.now - started < .seconds(2))
        }
    }
}

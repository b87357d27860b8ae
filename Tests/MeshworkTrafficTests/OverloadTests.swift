import MeshworkTraffic
import Testing

@Suite("Breakers, budgets, throttling and limits")
struct OverloadTests {
    let ms: UInt64 = 1_000_000
    let second: UInt64 = 1_000_000_000

    @Test func breakerRefusesOverTheLimitAndRecovers() {
        var limits = CircuitBreakerLimits()
        limits.maxRequests = 2
        var breaker = CircuitBreaker(limits: limits)
        let ok1 = breaker.tryAcquire(.requests)
        #expect(ok1)
        let ok2 = breaker.tryAcquire(.requests)
        #expect(ok2)
        let ok3 = breaker.tryAcquire(.requests)
        #expect(!ok3)
        let pending = breaker.tryAcquire(.pendingRequests)
        #expect(pending, "other resources are counted apart")
        breaker.release(.requests)
        let ok4 = breaker.tryAcquire(.requests)
        #expect(ok4)
        #expect(breaker.count(.requests) == 2)
    }

    @Test func breakerLimitsSplitAcrossLoopsRoundingUp() {
        var limits = CircuitBreakerLimits()
        limits.maxRequests = 5
        limits.maxRetries = 3
        let share = LoopShare(loops: 2).of(limits)
        #expect(share.maxRequests == 3)
        #expect(share.maxRetries == 2)
        #expect(LoopShare(loops: 4).of(0) == 0)
        #expect(LoopShare(loops: 4).of(10.0) == 2.5)
        // The inbound concurrency limiter is divided like the breakers.
        var limiter = GradientLimiterPolicy()
        limiter.maxConcurrency = 1000
        limiter.minConcurrency = 3
        let limiterShare = LoopShare(loops: 2).of(limiter)
        #expect(limiterShare.maxConcurrency == 500 && limiterShare.minConcurrency == 2)
    }

    @Test func aPushedPolicyRebuildsTheClusterTrafficAndKeepsWhatIsHeld() {
        let endpoints = (0..<3).map { BalancerEndpoint(key: "e\($0)") }
        var traffic = ClusterTraffic(
            policy: ClusterTrafficPolicy(),
            endpoints: endpoints,
            share: LoopShare(loops: 2),
            seed: 1,
            now: 0
        )
        #expect(traffic.breaker.limits.maxRequests == 512)
        // Two requests in flight, one retry spent from the budget.
        let first = traffic.breaker.tryAcquire(.requests)
        let second = traffic.breaker.tryAcquire(.requests)
        #expect(first && second)
        traffic.retryBudget.recordRequest(now: 0)
        let retried = traffic.retryBudget.tryRetry(now: 0)
        #expect(retried)
        let budgetBefore = traffic.retryBudget.allowance(now: 0)

        var policy = ClusterTrafficPolicy()
        policy.balancer = .roundRobin
        policy.circuitBreakers.maxRequests = 4
        policy.adaptiveThrottling = AdaptiveThrottlePolicy()
        policy.outlierDetection = nil
        traffic.update(policy: policy, endpoints: endpoints, previous: [0, 1, 2], seed: 2, now: 1)
        #expect(traffic.balancer.algorithm == .roundRobin)
        #expect(traffic.breaker.limits.maxRequests == 2)
        #expect(traffic.breaker.count(.requests) == 2, "held slots stay held")
        let overLimit = traffic.breaker.tryAcquire(.requests)
        #expect(!overLimit, "the lowered limit applies at once")
        #expect(traffic.throttle != nil)
        #expect(traffic.outliers == nil)
        #expect(traffic.retryBudget.allowance(now: 0) == budgetBefore, "same budget settings: the window is kept")

        // A new budget ratio takes effect (the requests seen stay counted).
        policy.retries.budgetRatio = 1
        traffic.update(policy: policy, endpoints: endpoints, previous: [0, 1, 2], seed: 3, now: 2)
        #expect(traffic.retryBudget.ratio == 1)
        #expect(traffic.retryBudget.allowance(now: 2) > budgetBefore)
        // Turning throttling off removes it.
        policy.adaptiveThrottling = nil
        traffic.update(policy: policy, endpoints: endpoints, previous: [0, 1, 2], seed: 4, now: 3)
        #expect(traffic.throttle == nil)
    }

    @Test func retryBudgetAllowsTwentyPercentPlusTheFloor() {
        var budget = RetryBudget(ratio: 0.2, minRetriesPerSecond: 1, window: .seconds(10))
        for _ in 0..<1000 { budget.recordRequest(now: 0) }
        // 0.2 x 1000 + 1/s x 10 s = 210 retries in the window, and no more.
        var granted = 0
        for _ in 0..<1000 where budget.tryRetry(now: 0) { granted += 1 }
        #expect(granted == 210)
    }

    @Test func retryBudgetRefillsAsTheWindowSlides() {
        var budget = RetryBudget(ratio: 0.2, minRetriesPerSecond: 0, window: .seconds(10))
        for _ in 0..<100 { budget.recordRequest(now: 0) }
        var granted = 0
        for _ in 0..<100 where budget.tryRetry(now: 0) { granted += 1 }
        #expect(granted == 20)
        // Eleven seconds on, the old requests and retries have left the window.
        for _ in 0..<50 { budget.recordRequest(now: 11 * second) }
        granted = 0
        for _ in 0..<100 where budget.tryRetry(now: 11 * second) { granted += 1 }
        #expect(granted == 10)
    }

    @Test func retriesNeverExceedTheBudgetUnderTotalFailure() {
        // Every request fails and wants 3 retries: the total stays within 1.2x + floor.
        var budget = RetryBudget(ratio: 0.2, minRetriesPerSecond: 10, window: .seconds(10))
        var sent = 0
        var now: UInt64 = 0
        for _ in 0..<100_000 {
            now += ms / 10
            budget.recordRequest(now: now)
            sent += 1
            for _ in 0..<3 where budget.tryRetry(now: now) { sent += 1 }
        }
        // 100k requests over 10 s plus retries: at most 20% more, plus 10/s over the
        // window (counted twice: the run spans the window's edge once).
        #expect(Double(sent) <= 100_000 * 1.2 + 200)
        #expect(Double(sent) >= 100_000 * 1.15)
    }

    @Test func backoffIsJitteredUnderAGrowingCeiling() {
        let backoff = ExponentialBackoff(base: .milliseconds(25), cap: .milliseconds(250))
        var random = SplitMix64(seed: 3)
        for attempt in 0..<8 {
            let ceiling = min(250, 25 << attempt)
            var samples: [Duration] = []
            for _ in 0..<200 { samples.append(backoff.delay(attempt: attempt, using: &random)) }
            #expect(samples.allSatisfy { $0 >= .zero && $0 < .milliseconds(ceiling) })
            #expect(samples.max()! > .milliseconds(ceiling / 2), "jitter spans the range")
        }
    }

    @Test func adaptiveThrottleMatchesTheFormula() {
        var throttle = AdaptiveThrottle(k: 2)
        var random = SplitMix64(seed: 1)
        // 100 requests, 20 accepted: p = (100 - 2 x 20) / 101.
        for n in 0..<100 {
            _ = throttle.shouldReject(now: 0, using: &random)
            if n < 20 { throttle.recordAccept(now: 0) }
        }
        #expect(abs(throttle.rejectionProbability(now: 0) - 60.0 / 101) < 1e-9)
        // A healthy backend (every request accepted) is never throttled.
        var healthy = AdaptiveThrottle()
        var rejected = 0
        for _ in 0..<1000 {
            if healthy.shouldReject(now: 0, using: &random) { rejected += 1 } else { healthy.recordAccept(now: 0) }
        }
        #expect(rejected == 0)
    }

    @Test func adaptiveThrottleShedsMostOfWhatADeadBackendWouldRefuse() {
        var throttle = AdaptiveThrottle()
        var random = SplitMix64(seed: 9)
        var sent = 0
        for _ in 0..<10_000 where !throttle.shouldReject(now: 0, using: &random) { sent += 1 }
        #expect(sent < 200, "only \(sent) of 10000 reach a backend that accepts nothing")
    }

    @Test func tokenBucketAllowsBurstThenRate() {
        var bucket = TokenBucket(rate: 10, burst: 5, now: 0)
        var allowed = 0
        for _ in 0..<20 where bucket.tryTake(now: 0) { allowed += 1 }
        #expect(allowed == 5)
        // One second later: ten more tokens, capped by the burst of five.
        allowed = 0
        for _ in 0..<20 where bucket.tryTake(now: second) { allowed += 1 }
        #expect(allowed == 5)
        // 100 ms later: one token.
        let ok5 = bucket.tryTake(now: second + 100 * ms)
        #expect(ok5)
        let ok6 = bucket.tryTake(now: second + 100 * ms)
        #expect(!ok6)
    }

    @Test func gradientLimiterMeasuresMinRTTThenGrowsWhileLatencyHolds() {
        var policy = GradientLimiterPolicy()
        policy.minRTTRequests = 10
        var limiter = GradientConcurrencyLimiter(policy: policy, now: 0)
        #expect(limiter.limit == 3 && limiter.isMeasuringMinRTT)
        var now: UInt64 = 0
        for _ in 0..<10 {
            let ok7 = limiter.tryAcquire(now: now)
            #expect(ok7)
            limiter.release(rtt: .milliseconds(10), now: now)
        }
        #expect(!limiter.isMeasuringMinRTT)
        #expect(limiter.minRTT == Double(10 * ms))
        // Latency at the ideal: gradient = 1.25/1 clamped... grows every window.
        var limits: [Int] = []
        for _ in 0..<5 {
            now += 100 * ms
            _ = limiter.tryAcquire(now: now - 1)
            limiter.release(rtt: .milliseconds(10), now: now)
            limits.append(limiter.limit)
        }
        #expect(limits == limits.sorted() && limits.last! > 3, "\(limits)")
        // First window by hand: gradient = (10 + 2.5) / 10 = 1.25; 3 x 1.25 = 3.75;
        // 3.75 + sqrt(3.75) = 5.69 -> 5.
        #expect(limits[0] == 5)
    }

    @Test func gradientLimiterShrinksWhenLatencyRises() {
        var policy = GradientLimiterPolicy()
        policy.minRTTRequests = 5
        var limiter = GradientConcurrencyLimiter(policy: policy, now: 0)
        var now: UInt64 = 0
        for _ in 0..<5 {
            _ = limiter.tryAcquire(now: now)
            limiter.release(rtt: .milliseconds(10), now: now)
        }
        for _ in 0..<10 {
            now += 100 * ms
            _ = limiter.tryAcquire(now: now - 1)
            limiter.release(rtt: .milliseconds(10), now: now)
        }
        let grown = limiter.limit
        // Queueing: latency four times the ideal halves the limit (gradient floor 0.5).
        now += 100 * ms
        _ = limiter.tryAcquire(now: now - 1)
        limiter.release(rtt: .milliseconds(40), now: now)
        let expected = Int((Double(grown) * 0.5 + (Double(grown) * 0.5).squareRoot()).rounded(.down))
        #expect(limiter.limit == max(3, expected))
        #expect(limiter.limit < grown)
    }

    @Test func gradientLimiterRefusesOverTheLimit() {
        var limiter = GradientConcurrencyLimiter(now: 0)
        for _ in 0..<3 {
            let admitted = limiter.tryAcquire(now: 0)
            #expect(admitted)
        }
        let ok8 = limiter.tryAcquire(now: 0)
        #expect(!ok8)
        limiter.release(rtt: nil, now: 0)
        let ok9 = limiter.tryAcquire(now: 0)
        #expect(ok9)
    }

    @Test func slidingWindowForgetsOldEvents() {
        var counter = SlidingWindowCounter(window: .seconds(10), buckets: 10)
        counter.add(5, now: 0)
        counter.add(3, now: 5 * second)
        #expect(counter.total(now: 5 * second) == 8)
        #expect(counter.total(now: 10 * second + 1) == 3)
        #expect(counter.total(now: 30 * second) == 0)
    }
}

import MeshworkTraffic
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Peak EWMA and P2C")
struct PeakEWMATests {
    let ms: Double = 1_000_000
    let second: UInt64 = 1_000_000_000

    func peakEWMA(count: Int, weights: [Double]? = nil, seed: UInt64) -> LoadBalancer<SplitMix64> {
        let weights = weights ?? Array(repeating: 1, count: count)
        return LoadBalancer(
            algorithm: .peakEWMA,
            endpoints: (0..<count).map { BalancerEndpoint(key: "e\($0)", weight: weights[$0]) },
            random: SplitMix64(seed: seed),
            now: 0
        )
    }

    @Test func newEndpointsStartAtThePrior() {
        let ewma = PeakEWMA(now: 0)
        #expect(ewma.cost == 30 * ms)
        #expect(ewma.load(at: 0) == 30 * ms)
    }

    @Test func aSlowerSampleIsTakenAtOnceUpToThePeakFactor() {
        var ewma = PeakEWMA(now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(50), now: 1)
        #expect(abs(ewma.cost - 50 * ms) < 1, "within 2x of 30 ms: taken whole")
        // A stall 20 times the estimate doubles it, and the next one doubles it again.
        ewma.requestStarted()
        ewma.requestFinished(rtt: .seconds(1), now: 2)
        #expect(abs(ewma.cost - 100 * ms) < 1)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .seconds(1), now: 3)
        #expect(abs(ewma.cost - 200 * ms) < 1)
        // Unbounded (Finagle's), one sample is enough.
        var finagle = PeakEWMA(peakFactor: .infinity, now: 0)
        finagle.requestStarted()
        finagle.requestFinished(rtt: .seconds(1), now: 1)
        #expect(abs(finagle.cost - 1000 * ms) < 1)
    }

    @Test func aSlowerSampleAfterALongIdleIsTakenWhole() {
        // The estimate decayed to almost nothing: the bound applies to what it is now,
        // and the blend (nearly the sample) wins.
        var ewma = PeakEWMA(now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(40), now: 60 * second)
        #expect(abs(ewma.cost - 40 * ms) < 0.01 * ms)
    }

    @Test func fasterSamplesBlendInWithTheTimeConstant() {
        var ewma = PeakEWMA(decay: .seconds(10), peakFactor: .infinity, now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(100), now: 0)
        // One time constant later: w = e^-1, cost = 100·e^-1 + 10·(1 − e^-1) = 43.11 ms.
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(10), now: 10 * second)
        let expected = 100 * ms * exp(-1) + 10 * ms * (1 - exp(-1))
        #expect(abs(ewma.cost - expected) < 1)
        #expect(abs(ewma.cost - 43.11 * ms) < 0.01 * ms)
    }

    @Test func loadGrowsWithPendingRequestsAndShrinksWithWeight() {
        var ewma = PeakEWMA(now: 0)
        ewma.requestStarted()
        ewma.requestStarted()
        #expect(ewma.pending == 2)
        #expect(ewma.load(at: 0) == 3 * 30 * ms)
        #expect(ewma.load(at: 0, weight: 3) == 30 * ms)
    }

    @Test func costDecaysWhileIdle() {
        var ewma = PeakEWMA(decay: .seconds(10), peakFactor: .infinity, now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(200), now: 0)
        #expect(abs(ewma.cost(at: 20 * second) - 200 * ms * exp(-2)) < 1)
        // The default time constant is a second: two seconds later, e^-2 of it is left.
        var fast = PeakEWMA(peakFactor: .infinity, now: 0)
        fast.requestStarted()
        fast.requestFinished(rtt: .milliseconds(200), now: 0)
        #expect(abs(fast.cost(at: 2 * second) - 200 * ms * exp(-2)) < 1)
    }

    @Test func anEndpointThatJoinsStartsAtTheClustersTypicalCost() {
        var old = peakEWMA(count: 3, seed: 3)
        // Three endpoints have settled at 1, 2 and 4 ms (long after their start).
        for (index, rtt) in [1, 2, 4].enumerated() {
            old.requestStarted(index)
            old.requestFinished(index, rtt: .milliseconds(rtt), now: 60 * second)
        }
        let endpoints = (0..<4).map { BalancerEndpoint(key: "e\($0)") }
        var grown = LoadBalancer(
            algorithm: .peakEWMA,
            endpoints: endpoints,
            random: SplitMix64(seed: 3),
            now: 60 * second
        )
        grown.carryOver(from: old, now: 60 * second)
        // The median of what the others cost, not the 30 ms prior.
        #expect(abs(grown.loads[3].cost - 2 * ms) < 0.01 * ms, "\(grown.loads[3].cost / ms) ms")
        #expect(abs(grown.loads[0].cost - 1 * ms) < 0.01 * ms)
        // And it is picked at once, about as often as its typical peer.
        var picks = [0, 0, 0, 0]
        for _ in 0..<4000 { picks[grown.pick(now: 60 * second)!] += 1 }
        #expect(picks[3] > 800, "\(picks)")
    }

    @Test func theSlowStartFactorFollowsEnvoysFormula() {
        let linear = SlowStartPolicy(window: .seconds(10), aggression: 1, minWeight: 0.1)
        #expect(linear.factor(elapsedNanos: 0) == 0.1)
        #expect(abs(linear.factor(elapsedNanos: 5 * second) - 0.5) < 1e-9)
        #expect(linear.factor(elapsedNanos: 10 * second) == 1)
        // Aggression 2: (t / window)^(1/2), so faster at first.
        let steep = SlowStartPolicy(window: .seconds(10), aggression: 2, minWeight: 0)
        #expect(abs(steep.factor(elapsedNanos: 2_500_000_000) - 0.5) < 1e-9)
    }

    @Test func aJoiningEndpointRampsUpOverTheSlowStartWindow() {
        let ramp = SlowStartPolicy(window: .seconds(10), aggression: 1, minWeight: 0.1)
        var old = LoadBalancer(
            algorithm: .peakEWMA,
            endpoints: (0..<3).map { BalancerEndpoint(key: "e\($0)") },
            random: SplitMix64(seed: 5),
            now: 0,
            slowStart: ramp
        )
        for index in 0..<3 {
            old.requestStarted(index)
            old.requestFinished(index, rtt: .milliseconds(1), now: 60 * second)
        }
        var grown = LoadBalancer(
            algorithm: .peakEWMA,
            endpoints: (0..<4).map { BalancerEndpoint(key: "e\($0)") },
            random: SplitMix64(seed: 5),
            now: 60 * second,
            slowStart: ramp
        )
        grown.carryOver(from: old, now: 60 * second)
        func share(at offset: UInt64) -> Double {
            var picks = 0
            for _ in 0..<8000 where grown.pick(now: 60 * second + offset) == 3 { picks += 1 }
            return Double(picks) / 8000
        }
        // Its fair share is 1/4 once ramped; about factor x that on the way.
        let start = share(at: 0)
        let middle = share(at: 5 * second)
        let end = share(at: 10 * second)
        #expect(start > 0.01 && start < 0.07, "\(start)")
        #expect(middle > 0.09 && middle < 0.2, "\(middle)")
        #expect(end > 0.2 && end < 0.3, "\(end)")
        // The endpoints of the first state never ramp.
        var first = LoadBalancer(
            algorithm: .peakEWMA,
            endpoints: (0..<4).map { BalancerEndpoint(key: "e\($0)") },
            random: SplitMix64(seed: 5),
            now: 0,
            slowStart: ramp
        )
        var picks = 0
        for _ in 0..<8000 where first.pick(now: 0) == 3 { picks += 1 }
        #expect(Double(picks) / 8000 > 0.2)
    }

    @Test func p2cNeverPicksTheSlowestOfThree() {
        var balancer = peakEWMA(count: 3, seed: 42)
        for (index, rtt) in [5, 50, 500].enumerated() {
            balancer.requestStarted(index)
            balancer.requestFinished(index, rtt: .milliseconds(rtt), now: 0)
        }
        var picks = [0, 0, 0]
        for _ in 0..<3000 {
            picks[balancer.pick(now: 0)!] += 1
        }
        #expect(picks[2] == 0)
        // The fastest wins every pair it is in: two of the three pairs.
        #expect(abs(Double(picks[0]) / 3000 - 2.0 / 3) < 0.05)
    }

    @Test func p2cFollowsWeightsWhenLatencyIsEqual() {
        // Closed loop: each pick adds a pending request to the picked endpoint until it is
        // answered; the heavier endpoint carries proportionally more in flight.
        var balancer = peakEWMA(count: 2, weights: [3, 1], seed: 7)
        var inFlight: [Int] = []
        var picks = [0, 0]
        for step in 0..<20_000 {
            let index = balancer.pick(now: 0)!
            picks[index] += 1
            balancer.requestStarted(index)
            inFlight.append(index)
            if inFlight.count > 16 {
                let done = inFlight.removeFirst()
                balancer.requestFinished(done, rtt: .milliseconds(10), now: UInt64(step))
            }
        }
        let share = Double(picks[0]) / Double(picks[0] + picks[1])
        #expect(abs(share - 0.75) < 0.05, "share of the weight-3 endpoint: \(share)")
    }

    @Test func sameSeedSamePicks() {
        var a = peakEWMA(count: 5, seed: 1)
        var b = peakEWMA(count: 5, seed: 1)
        let first = (0..<100).map { _ in a.pick(now: 0)! }
        let second = (0..<100).map { _ in b.pick(now: 0)! }
        #expect(first == second)
        #expect(Set(first).count == 5)
    }

    @Test func emptyAndSingle() {
        var none = peakEWMA(count: 0, seed: 1)
        #expect(none.pick(now: 0) == nil)
        var one = peakEWMA(count: 1, seed: 1)
        #expect(one.pick(now: 0) == 0)
    }
}

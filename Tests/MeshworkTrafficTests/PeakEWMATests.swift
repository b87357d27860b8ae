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

    @Test func aSlowerSampleIsTakenAtOnce() {
        var ewma = PeakEWMA(now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(100), now: 1)
        #expect(ewma.cost == 100 * ms)
    }

    @Test func fasterSamplesBlendInWithTheTimeConstant() {
        var ewma = PeakEWMA(now: 0)
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
        var ewma = PeakEWMA(now: 0)
        ewma.requestStarted()
        ewma.requestFinished(rtt: .milliseconds(200), now: 0)
        #expect(abs(ewma.cost(at: 20 * second) - 200 * ms * exp(-2)) < 1)
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

import MeshworkTraffic
import Testing

@Suite("Load balancers")
struct LoadBalancerTests {
    func balancer(
        _ algorithm: BalancerAlgorithm,
        weights: [Double],
        zones: [String?]? = nil,
        localZone: String? = nil,
        seed: UInt64 = 1,
        start: Int = 0
    ) -> LoadBalancer<SplitMix64> {
        let endpoints = weights.indices.map {
            BalancerEndpoint(key: "10.0.0.\($0):8080", weight: weights[$0], zone: zones?[$0])
        }
        return LoadBalancer(
            algorithm: algorithm,
            endpoints: endpoints,
            zones: ZonePolicy(localZone: localZone),
            random: SplitMix64(seed: seed),
            now: 0,
            roundRobinStart: start
        )
    }

    func counts(_ lb: inout LoadBalancer<SplitMix64>, picks: Int, hash: ((Int) -> UInt64)? = nil) -> [Int] {
        var counts = Array(repeating: 0, count: lb.endpoints.count)
        for n in 0..<picks {
            counts[lb.pick(now: 0, hash: hash?(n))!] += 1
        }
        return counts
    }

    @Test func roundRobinCyclesInOrderAndStartsWhereAsked() {
        var lb = balancer(.roundRobin, weights: [1, 1, 1])
        #expect((0..<7).map { _ in lb.pick(now: 0)! } == [0, 1, 2, 0, 1, 2, 0])
        var other = balancer(.roundRobin, weights: [1, 1, 1], start: 1)
        #expect(other.pick(now: 0) == 1)
    }

    @Test func roundRobinSkipsUnavailableEndpoints() {
        var lb = balancer(.roundRobin, weights: [1, 1, 1])
        lb.setAvailable(1, false)
        #expect((0..<4).map { _ in lb.pick(now: 0)! } == [0, 2, 0, 2])
        lb.setAvailable(0, false)
        lb.setAvailable(2, false)
        #expect(lb.pick(now: 0) == nil)
        #expect(lb.availableCount == 0)
    }

    @Test func smoothWeightedRoundRobinInterleavesLikeNginx() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        var lb = balancer(.weightedRoundRobin, weights: [5, 1, 1])
        #expect((0..<7).map { _ in lb.pick(now: 0)! } == [0, 0, 1, 0, 2, 0, 0])
        #expect(counts(&lb, picks: 700) == [500, 100, 100])
    }

    @Test func weightedRandomFollowsWeights() {
        var lb = balancer(.random, weights: [3, 1])
        let c = counts(&lb, picks: 40_000)
        #expect(abs(Double(c[0]) / 40_000 - 0.75) < 0.01)
    }

    @Test func zeroWeightTakesNothing() {
        for algorithm in [BalancerAlgorithm.weightedRoundRobin, .random, .peakEWMA, .ringHash, .maglev] {
            var lb = balancer(algorithm, weights: [1, 0, 1])
            #expect(counts(&lb, picks: 2000)[1] == 0, "\(algorithm)")
        }
    }

    @Test func leastRequestAvoidsTheBusiestEndpoint() {
        var lb = balancer(.leastRequest, weights: [1, 1, 1])
        for _ in 0..<5 { lb.requestStarted(2) }
        lb.requestStarted(1)
        let c = counts(&lb, picks: 3000)
        #expect(c[2] == 0)
        // Endpoint 0 (0 pending) wins both pairs it is in; endpoint 1 only the pair with 2.
        #expect(abs(Double(c[0]) / 3000 - 2.0 / 3) < 0.05)
    }

    @Test func unavailableEndpointsNeverPicked() {
        for algorithm in BalancerAlgorithm.allCases {
            var lb = balancer(algorithm, weights: [1, 1, 1, 1])
            lb.setAvailable(3, false)
            let c = counts(&lb, picks: 4000) { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
            #expect(c[3] == 0, "\(algorithm)")
            #expect(c[0] > 0 && c[1] > 0 && c[2] > 0, "\(algorithm)")
        }
    }

    @Test func zoneAwareStaysLocalWhileEnoughIsHealthy() {
        let zones = ["a", "a", "a", "a", "b", "b"]
        var lb = balancer(.roundRobin, weights: [1, 1, 1, 1, 1, 1], zones: zones, localZone: "a")
        #expect(lb.localShare == 1)
        #expect(counts(&lb, picks: 600)[4...].allSatisfy { $0 == 0 })
        // 3 of 4 healthy: 0.75 x 1.4 > 1, still all local.
        lb.setAvailable(0, false)
        #expect(lb.localShare == 1)
        #expect(counts(&lb, picks: 600)[4...].allSatisfy { $0 == 0 })
    }

    @Test func zoneAwareSpillsInProportionWhenLocalZoneDegrades() {
        let zones = ["a", "a", "a", "a", "b", "b"]
        var lb = balancer(.random, weights: [1, 1, 1, 1, 1, 1], zones: zones, localZone: "a")
        lb.setAvailable(0, false)
        lb.setAvailable(1, false)
        // Half the local zone is healthy: it keeps 0.5 x 1.4 = 70% of the traffic.
        #expect(abs(lb.localShare - 0.7) < 1e-9)
        let c = counts(&lb, picks: 50_000)
        let local = Double(c[2] + c[3]) / 50_000
        #expect(abs(local - 0.7) < 0.01, "local share \(local)")
        #expect(abs(Double(c[4] - c[5])) / 50_000 < 0.02)
        // No local endpoint at all: everything goes remote.
        lb.setAvailable(2, false)
        lb.setAvailable(3, false)
        #expect(counts(&lb, picks: 100)[0..<4].allSatisfy { $0 == 0 })
    }

    @Test func instancesTheRegistryKnowsUnhealthyCountInTheirZonesTotal() {
        // Zone a: one healthy endpoint; three more instances exist but are unhealthy (not
        // endpoints at all). Zone b: two healthy.
        let endpoints = [("a", 1.0), ("b", 1.0), ("b", 1.0)].enumerated().map {
            BalancerEndpoint(key: "10.0.0.\($0.offset):8080", weight: $0.element.1, zone: $0.element.0)
        }
        var lb = LoadBalancer(
            algorithm: .random,
            endpoints: endpoints,
            zones: ZonePolicy(localZone: "a", unservedLocalWeight: 3),
            random: SplitMix64(seed: 9),
            now: 0
        )
        // 1 of 4 local is healthy: 1.4 x 1/4 = 35% stays, the rest spills to b.
        #expect(abs(lb.localShare - 0.35) < 1e-9)
        var local = 0
        for _ in 0..<20_000 where lb.pick(now: 0) == 0 { local += 1 }
        #expect(abs(Double(local) / 20_000 - 0.35) < 0.015, "\(local)")
        // Without them, the lone healthy instance kept every local caller.
        let blind = LoadBalancer(
            algorithm: .random,
            endpoints: endpoints,
            zones: ZonePolicy(localZone: "a"),
            random: SplitMix64(seed: 9),
            now: 0
        )
        #expect(blind.localShare == 1)
    }

    @Test(arguments: [BalancerAlgorithm.ringHash, .maglev])
    func hashingIsStickyAndConsistent(_ algorithm: BalancerAlgorithm) {
        var lb = balancer(algorithm, weights: Array(repeating: 1, count: 10))
        let keys = (0..<5000).map { StableHash.hash("user-\($0)") }
        let before = keys.map { lb.pick(now: 0, hash: $0)! }
        // Same key, same endpoint, every time and in a fresh balancer (another sidecar).
        var other = balancer(algorithm, weights: Array(repeating: 1, count: 10), seed: 99)
        #expect(keys.map { other.pick(now: 0, hash: $0)! } == before)
        // Removing one endpoint moves its keys, and (almost) only those.
        lb.setAvailable(4, false)
        let after = keys.map { lb.pick(now: 0, hash: $0)! }
        var movedOthers = 0
        for (old, new) in zip(before, after) where old != 4 && old != new { movedOthers += 1 }
        #expect(!after.contains(4))
        let limit = algorithm == .ringHash ? 0 : keys.count / 50
        #expect(movedOthers <= limit, "\(algorithm) moved \(movedOthers) keys of live endpoints")
    }

    @Test(arguments: [BalancerAlgorithm.ringHash, .maglev])
    func hashingSharesFollowWeights(_ algorithm: BalancerAlgorithm) {
        var lb = balancer(algorithm, weights: [2, 1, 1])
        let c = counts(&lb, picks: 40_000) { StableHash.mix(UInt64($0)) }
        let share = Double(c[0]) / 40_000
        let tolerance = algorithm == .maglev ? 0.02 : 0.05
        #expect(abs(share - 0.5) < tolerance, "\(algorithm) share \(share)")
    }

    @Test func maglevSharesAreEven() {
        var lb = balancer(.maglev, weights: Array(repeating: 1, count: 7))
        let c = counts(&lb, picks: 70_000) { StableHash.mix(UInt64($0)) }
        #expect(c.allSatisfy { abs(Double($0) / 10_000 - 1) < 0.05 }, "\(c)")
    }

    @Test func stableHashIsStable() {
        // Golden values: every sidecar, every build, every run must agree on them, or
        // consistent hashing stops being consistent across the mesh. The FNV-1a 64 part
        // against the published test vectors ("a", "foobar"), the finalizer against
        // SplitMix64's first output for seed 0, and the whole for keys computed
        // independently (Python).
        #expect(StableHash.mix(0x9E37_79B9_7F4A_7C15) == 0xE220_A839_7B1D_CDAF)
        #expect(StableHash.hash("a") == StableHash.mix(0xAF63_DC4C_8601_EC8C))
        #expect(StableHash.hash("foobar") == StableHash.mix(0x8594_4171_F739_67E8))
        #expect(StableHash.hash("a") == 0x02C0_BDBF_4814_20F8)
        #expect(StableHash.hash("orders") == 0x4598_7D0B_68FC_7229)
        #expect(StableHash.hash("user-42") == 0x7A15_96F0_E94B_5793)
        #expect(StableHash.hash("") == StableHash.mix(0xCBF2_9CE4_8422_2325))
    }
}

import MeshworkTraffic
import Testing

@Suite("Round robin")
struct RoundRobinBalancerTests {
    @Test func cyclesThroughEveryEndpointInOrder() {
        var balancer = RoundRobinBalancer()
        let picks = (0..<7).compactMap { _ in balancer.pick(count: 3) }
        #expect(picks == [0, 1, 2, 0, 1, 2, 0])
    }

    @Test func startOffsetSpreadsLoops() {
        var a = RoundRobinBalancer(start: 0)
        var b = RoundRobinBalancer(start: 1)
        #expect(a.pick(count: 2) != b.pick(count: 2))
    }

    @Test func noEndpointsNoPick() {
        var balancer = RoundRobinBalancer()
        #expect(balancer.pick(count: 0) == nil)
    }

    @Test func shrinkingListStaysInRange() {
        var balancer = RoundRobinBalancer()
        _ = balancer.pick(count: 5)
        _ = balancer.pick(count: 5)
        _ = balancer.pick(count: 5)
        for _ in 0..<10 {
            let pick = balancer.pick(count: 2)
            #expect(pick != nil && pick! < 2)
        }
    }
}

import MeshworkTraffic
import Testing

@Suite("Outlier detection")
struct OutlierDetectorTests {
    let second: UInt64 = 1_000_000_000

    @Test func fiveConsecutive5xxEject() {
        var detector = OutlierDetector(count: 4, now: 0)
        for _ in 0..<4 { #expect(detector.record(0, .serverError, now: 0) == nil) }
        #expect(
            detector.record(0, .serverError, now: 0)
                == .ejected(index: 0, reason: .consecutive5xx, duration: .seconds(30))
        )
        #expect(detector.isEjected(0))
    }

    @Test func aSuccessResetsTheStreak() {
        var detector = OutlierDetector(count: 4, now: 0)
        for _ in 0..<4 { _ = detector.record(0, .serverError, now: 0) }
        _ = detector.record(0, .success, now: 0)
        for _ in 0..<4 { #expect(detector.record(0, .serverError, now: 0) == nil) }
        #expect(!detector.isEjected(0))
    }

    @Test func gatewayFailuresHaveTheirOwnThreshold() {
        var policy = OutlierDetectionPolicy()
        policy.consecutiveGatewayFailures = 3
        var detector = OutlierDetector(count: 4, policy: policy, now: 0)
        _ = detector.record(1, .gatewayFailure, now: 0)
        _ = detector.record(1, .gatewayFailure, now: 0)
        #expect(
            detector.record(1, .gatewayFailure, now: 0)
                == .ejected(index: 1, reason: .consecutiveGatewayFailures, duration: .seconds(30))
        )
    }

    @Test func ejectionTimeGrowsWithEachEjectionUpToTheCap() {
        var policy = OutlierDetectionPolicy()
        policy.consecutive5xx = 1
        policy.baseEjectionTime = .seconds(30)
        policy.maxEjectionTime = .seconds(70)
        var detector = OutlierDetector(count: 2, policy: policy, now: 0)
        var now: UInt64 = 0
        var durations: [Duration] = []
        for _ in 0..<3 {
            if case .ejected(_, _, let duration) = detector.record(0, .serverError, now: now) {
                durations.append(duration)
            }
            // Wait out the ejection: it returns at the first interval tick after it ends.
            now += 80 * second
            #expect(detector.tick(now: now) == [.returned(index: 0)])
        }
        #expect(durations == [.seconds(30), .seconds(60), .seconds(70)])
    }

    @Test func returnsOnlyAfterItsTimeAndKeepsItsCountOnProbation() {
        var policy = OutlierDetectionPolicy()
        policy.consecutive5xx = 1
        var detector = OutlierDetector(count: 2, policy: policy, now: 0)
        _ = detector.record(0, .serverError, now: 0)
        #expect(detector.tick(now: 10 * second).isEmpty)
        #expect(detector.tick(now: 20 * second).isEmpty)
        #expect(detector.tick(now: 30 * second) == [.returned(index: 0)])
        #expect(detector.ejectionCount(0) == 1)
        // A clean interval on probation lowers the count again.
        #expect(detector.tick(now: 40 * second).isEmpty)
        #expect(detector.ejectionCount(0) == 0)
    }

    @Test func maxEjectionPercentCapsEjections() {
        var policy = OutlierDetectionPolicy()
        policy.consecutive5xx = 1
        policy.maxEjectionPercent = 50
        var detector = OutlierDetector(count: 4, policy: policy, now: 0)
        for index in 0..<4 { _ = detector.record(index, .serverError, now: 0) }
        #expect(detector.ejectedCount == 2)
        // At least one may always be ejected, even when the percentage rounds to zero.
        policy.maxEjectionPercent = 10
        var small = OutlierDetector(count: 3, policy: policy, now: 0)
        for index in 0..<3 { _ = small.record(index, .serverError, now: 0) }
        #expect(small.ejectedCount == 1)
        // The last endpoint standing is never ejected.
        var single = OutlierDetector(count: 1, policy: policy, now: 0)
        #expect(single.record(0, .serverError, now: 0) == nil)
        #expect(!single.isEjected(0))
    }

    @Test func successRateOutlierIsEjected() {
        var detector = OutlierDetector(count: 6, now: 0)
        // Five endpoints at 99-100% success, one at 70%: mean - 1.9 sd is about 0.83.
        for index in 0..<6 {
            for n in 0..<100 {
                let failed = index == 5 ? n < 30 : (index == 0 && n == 0)
                _ = detector.record(index, failed ? .success : .success, now: 0)
                if failed { _ = detector.record(index, .serverError, now: 0) }
            }
        }
        let events = detector.tick(now: 10 * second)
        #expect(events == [.ejected(index: 5, reason: .successRate, duration: .seconds(30))])
    }

    @Test func successRateNeedsVolumeAndHosts() {
        var detector = OutlierDetector(count: 6, now: 0)
        for index in 0..<6 {
            for n in 0..<50 { _ = detector.record(index, index == 5 && n < 25 ? .serverError : .success, now: 0) }
        }
        // 50 requests each is under the 100-request volume: nobody is judged.
        #expect(detector.tick(now: 10 * second).isEmpty)
    }

    @Test func ejectionsSurviveAChangedEndpointList() {
        var policy = OutlierDetectionPolicy()
        policy.consecutive5xx = 1
        var old = OutlierDetector(count: 3, policy: policy, now: 0)
        _ = old.record(2, .serverError, now: 0)
        #expect(old.isEjected(2))
        // A new endpoint joins at the front: the old index 2 is now index 3.
        var new = OutlierDetector(count: 4, policy: policy, now: 0)
        new.carryOver(from: old, previous: [nil, 0, 1, 2])
        #expect(new.isEjected(3))
        #expect(!new.isEjected(0) && !new.isEjected(1) && !new.isEjected(2))
        #expect(new.ejectionCount(3) == 1)
    }

    @Test func outcomesFromStatus() {
        #expect(ExchangeOutcome(status: 200) == .success)
        #expect(ExchangeOutcome(status: 404) == .success)
        #expect(ExchangeOutcome(status: 500) == .serverError)
        #expect(ExchangeOutcome(status: 503) == .gatewayFailure)
    }
}

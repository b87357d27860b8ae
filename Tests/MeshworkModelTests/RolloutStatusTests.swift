import Foundation
import Testing

@testable import MeshworkModel

/// The rollout's state machine, one test per transition (issue 19). Times in milliseconds.
@Suite("Rollouts: the state machine")
struct RolloutStatusTests {
    private func rollout(_ steps: [RolloutStep], failureLimit: Int = 0, inconclusiveLimit: Int = 2) -> Rollout {
        var rollout = Rollout(name: "orders-v2", service: "orders", stable: "v1", canary: "v2")
        rollout.steps = steps
        rollout.failureLimit = failureLimit
        rollout.inconclusiveLimit = inconclusiveLimit
        return rollout
    }

    private func analysis(count: Int = 1) -> RolloutAnalysis {
        var analysis = RolloutAnalysis()
        analysis.successRate = 99
        analysis.p99 = .milliseconds(250)
        analysis.interval = .seconds(10)
        analysis.minRequests = 50
        analysis.count = count
        return analysis
    }

    private let good = AnalysisFigures(requests: 200, successRate: 100, p99: 12)
    private let bad = AnalysisFigures(requests: 200, successRate: 80, p99: 12)
    private let slow = AnalysisFigures(requests: 200, successRate: 100, p99: 900)
    private let few = AnalysisFigures(requests: 3, successRate: 100, p99: 12)

    /// The canary rule's weights: (stable, canary).
    private func weights(_ status: RolloutStatus, _ rollout: Rollout) -> [Int] {
        status.route(for: rollout).rules.last?.backends.map(\.weight) ?? []
    }

    @Test func startRunsTheStepsThatTakeNoTimeUpToTheFirstThatWaits() {
        let r = rollout([.setWeight(10), .pause(.seconds(30)), .setWeight(50)])
        let (status, effects) = RolloutStatus.start(r, now: 1000)
        #expect(effects.isEmpty)
        #expect(status.phase == .progressing && status.step == 1 && status.weight == 10)
        #expect(weights(status, r) == [90, 10])
        let route = status.route(for: r)
        #expect(route.name == "rollout-orders-v2" && route.parents == ["orders"])
        #expect(route.rules.last?.backends.map(\.clusterName) == ["orders~version=v1", "orders~version=v2"])
    }

    @Test func aTimedPauseEndsAtItsDuration() {
        let r = rollout([.setWeight(10), .pause(.seconds(30)), .setWeight(50), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        #expect(status.handle(.tick, r, now: 29_999).isEmpty)
        #expect(status.step == 1 && status.weight == 10)
        _ = status.handle(.tick, r, now: 30_000)
        #expect(status.step == 3 && status.weight == 50)
    }

    @Test func anIndefinitePauseHoldsUntilPromotedAndResumeDoesNotEndIt() {
        let r = rollout([.setWeight(20), .pause(nil), .setWeight(60), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        #expect(status.phase == .paused && status.step == 1)
        _ = status.handle(.tick, r, now: 1_000_000)
        _ = status.handle(.resume, r, now: 1_000_001)
        #expect(status.phase == .paused && status.step == 1 && status.weight == 20)
        _ = status.handle(.promote, r, now: 1_000_002)
        #expect(status.step == 3 && status.weight == 60 && status.phase == .paused)
    }

    @Test func anAnalysisAsksForOneMeasurementPerInterval() {
        let a = analysis()
        let r = rollout([.setWeight(10), .analysis(a)])
        var (status, _) = RolloutStatus.start(r, now: 5000)
        #expect(status.handle(.tick, r, now: 14_999).isEmpty)
        #expect(status.handle(.tick, r, now: 15_000) == [.measure(a, since: 5000)])
        #expect(status.handle(.tick, r, now: 16_000).isEmpty, "one measurement at a time")
        _ = status.handle(.measured(few), r, now: 16_500)
        #expect(status.handle(.tick, r, now: 26_499).isEmpty)
        #expect(status.handle(.tick, r, now: 26_500) == [.measure(a, since: 16_500)])
    }

    /// A controller that takes the lead (restarted, or another one) has none of the last
    /// window's reports: the analysis measures a new window from then, even one that was
    /// being measured; any other step is left as it was.
    @Test func aRestoredAnalysisMeasuresANewWindowFromTheRestore() {
        let a = analysis()
        let r = rollout([.setWeight(10), .analysis(a), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 5000)
        #expect(status.handle(.tick, r, now: 15_000) == [.measure(a, since: 5000)])
        #expect(status.handle(.restored, r, now: 15_500).isEmpty)
        #expect(status.windowStart == 15_500 && !status.measuring)
        #expect(status.history.last?.message.contains("analysis window begun again") == true)
        #expect(status.handle(.tick, r, now: 25_499).isEmpty, "the old window is not measured")
        #expect(status.handle(.tick, r, now: 25_500) == [.measure(a, since: 15_500)])
        _ = status.handle(.measured(good), r, now: 25_600)
        #expect(status.step == 2 && status.phase == .paused)
        let before = status
        #expect(status.handle(.restored, r, now: 30_000).isEmpty)
        #expect(status == before, "a pause is not an analysis: nothing changes")
    }

    @Test func successfulMeasurementsPassTheStepOnceThereAreEnough() {
        let r = rollout([.setWeight(10), .analysis(analysis(count: 2)), .setWeight(50), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.tick, r, now: 10_000)
        _ = status.handle(.measured(good), r, now: 10_000)
        #expect(status.step == 1 && status.successes == 1 && status.weight == 10)
        _ = status.handle(.tick, r, now: 20_000)
        _ = status.handle(.measured(good), r, now: 20_000)
        #expect(status.step == 3 && status.weight == 50)
        #expect(status.figures == good)
    }

    @Test func aFailedAnalysisPastTheLimitRollsBackAtOnceAndSaysWhy() {
        var r = rollout([.setWeight(30), .analysis(analysis())], failureLimit: 1)
        r.webhooks.rollback = "http://127.0.0.1:1/rollback"
        var (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.tick, r, now: 10_000)
        #expect(status.handle(.measured(bad), r, now: 10_000).isEmpty)
        #expect(status.phase == .progressing && status.failures == 1 && status.weight == 30, "one failure is tolerated")
        _ = status.handle(.tick, r, now: 20_000)
        let effects = status.handle(.measured(slow), r, now: 20_000)
        #expect(status.phase == .degraded && status.weight == 0)
        #expect(weights(status, r) == [100, 0])
        #expect(status.message == "analysis failed: p99 900 ms > 250 ms over 200 requests: all traffic on stable")
        #expect(effects == [.callWebhook(.rollback, url: "http://127.0.0.1:1/rollback")])
        #expect(status.handle(.tick, r, now: 30_000).isEmpty && status.phase == .degraded)
    }

    @Test func tooFewRequestsAreInconclusiveAndHoldTheStepThenPause() {
        let r = rollout([.setWeight(10), .analysis(analysis()), .setWeight(100)], inconclusiveLimit: 2)
        var (status, _) = RolloutStatus.start(r, now: 0)
        var now: Int64 = 0
        for round in 1...2 {
            now += 10_000
            _ = status.handle(.tick, r, now: now)
            _ = status.handle(.measured(few), r, now: now)
            #expect(status.phase == .progressing && status.step == 1 && status.inconclusive == round)
        }
        #expect(status.message.hasPrefix("inconclusive (2 of 2 tolerated): 3 requests of the 50 needed"))
        now += 10_000
        _ = status.handle(.tick, r, now: now)
        _ = status.handle(.measured(AnalysisFigures(requests: 0, successRate: nil, p99: nil)), r, now: now)
        #expect(status.phase == .paused && status.step == 1 && status.weight == 10 && status.failures == 0)
        // Resumed: a new window from now, measured after a whole interval.
        #expect(status.handle(.resume, r, now: now + 1).isEmpty)
        #expect(status.phase == .progressing && status.inconclusive == 0)
        #expect(status.handle(.tick, r, now: now + 10_001) == [.measure(analysis(), since: now + 1)])
    }

    @Test func theLastStepPromotesOrAsksTheConfirmPromotionWebhook() {
        var r = rollout([.setWeight(50)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        #expect(status.phase == .promoted && status.weight == 100 && weights(status, r) == [0, 100])

        r.webhooks.confirmPromotion = "http://127.0.0.1:1/confirm"
        var effects: [RolloutEffect]
        (status, effects) = RolloutStatus.start(r, now: 0)
        #expect(effects == [.callWebhook(.confirmPromotion, url: "http://127.0.0.1:1/confirm")])
        #expect(status.phase == .progressing && status.awaiting == .confirmPromotion && status.weight == 50)
        #expect(status.handle(.promote, r, now: 1).isEmpty && status.phase == .progressing, "the webhook decides")
        _ = status.handle(.webhook(.confirmPromotion, accepted: false, message: "503"), r, now: 2)
        #expect(status.phase == .paused && status.weight == 50 && status.message.contains("refused: 503"))
        // Resumed (or promoted): the webhook is asked again, and still decides.
        #expect(
            status.handle(.resume, r, now: 3) == [.callWebhook(.confirmPromotion, url: "http://127.0.0.1:1/confirm")]
        )
        #expect(status.awaiting == .confirmPromotion && status.weight == 50)

        (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.webhook(.confirmPromotion, accepted: true, message: ""), r, now: 3)
        #expect(status.phase == .promoted && status.weight == 100)
    }

    @Test func thePreRolloutWebhookHoldsTheFirstStep() {
        var r = rollout([.setWeight(10), .pause(nil)])
        r.webhooks.preRollout = "http://127.0.0.1:1/pre"
        var (status, effects) = RolloutStatus.start(r, now: 0)
        #expect(effects == [.callWebhook(.preRollout, url: "http://127.0.0.1:1/pre")])
        #expect(status.phase == .pending && status.weight == 0)
        #expect(status.handle(.promote, r, now: 1).isEmpty && status.phase == .pending)
        _ = status.handle(.webhook(.preRollout, accepted: false, message: "no capacity"), r, now: 2)
        #expect(status.phase == .aborted && status.weight == 0 && status.message.contains("no capacity"))
        effects = status.handle(.retry, r, now: 3)
        #expect(effects == [.callWebhook(.preRollout, url: "http://127.0.0.1:1/pre")] && status.phase == .pending)
        _ = status.handle(.webhook(.preRollout, accepted: true, message: ""), r, now: 4)
        #expect(status.step == 1 && status.weight == 10)
        // An answer to a webhook it is not waiting for changes nothing.
        let before = status
        _ = status.handle(.webhook(.preRollout, accepted: false, message: "late"), r, now: 3)
        #expect(status == before)
    }

    @Test func abortSendsEverythingToStableFromAnyPhaseButAFinishedOne() {
        let r = rollout([
            .setWeight(40), .setHeaderRoute([HeaderMatch(name: "x-beta", test: .exact("1"))]), .mirror(20), .pause(nil),
        ])
        var (status, _) = RolloutStatus.start(r, now: 0)
        #expect(status.route(for: r).rules.count == 2)
        _ = status.handle(.abort, r, now: 1)
        #expect(status.phase == .aborted && status.weight == 0 && status.headerStep == nil && status.mirror == 0)
        let route = status.route(for: r)
        #expect(
            route.rules.count == 1 && route.rules[0].backends.map(\.weight) == [100, 0]
                && route.rules[0].filters.isEmpty
        )
        let promoted = rollout([.setWeight(10)])
        var done = RolloutStatus.start(promoted, now: 0).0
        _ = done.handle(.abort, promoted, now: 1)
        #expect(done.phase == .promoted && done.weight == 100)
    }

    @Test func retryStartsOverOnlyAfterARollback() {
        let r = rollout([.setWeight(10), .analysis(analysis())])
        var (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.retry, r, now: 1)
        #expect(status.history.count == 2, "retry of a running rollout is ignored")
        _ = status.handle(.tick, r, now: 10_000)
        _ = status.handle(.measured(bad), r, now: 10_000)
        #expect(status.phase == .degraded && status.failures == 1)
        _ = status.handle(.retry, r, now: 20_000)
        #expect(status.phase == .progressing && status.step == 1 && status.weight == 10 && status.failures == 0)
        #expect(status.windowStart == 20_000 && !status.measuring)
    }

    @Test func anOperatorPausesAndResumes() {
        let r = rollout([.setWeight(10), .pause(.seconds(60)), .setWeight(90), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.pause, r, now: 1000)
        #expect(status.phase == .paused)
        _ = status.handle(.tick, r, now: 120_000)
        #expect(status.step == 1, "a paused rollout does not move")
        _ = status.handle(.resume, r, now: 120_001)
        #expect(status.step == 3 && status.weight == 90)
    }

    @Test func theHeaderRouteGoesFirstAndTheMirrorRidesTheSplit() {
        let beta = HeaderMatch(name: "x-beta", test: .exact("1"))
        let r = rollout([
            .setHeaderRoute([beta]), .mirror(25), .setWeight(5), .pause(nil), .setHeaderRoute([]), .mirror(0),
            .pause(nil),
        ])
        var (status, _) = RolloutStatus.start(r, now: 0)
        var route = status.route(for: r)
        #expect(route.rules.map(\.name) == ["header", "canary"])
        #expect(route.rules[0].matches.first?.headers == [beta])
        #expect(route.rules[0].backends.map(\.clusterName) == ["orders~version=v2"])
        guard case .mirror(let mirror) = route.rules[1].filters.first else {
            Issue.record("no mirror")
            return
        }
        #expect(mirror.percent == 25 && mirror.backend.clusterName == "orders~version=v2")
        _ = status.handle(.promote, r, now: 1)
        route = status.route(for: r)
        #expect(route.rules.map(\.name) == ["canary"] && route.rules[0].filters.isEmpty)
        #expect(route.rules[0].backends.map(\.weight) == [95, 5])
    }

    @Test func theStatusIsStoredAndReadBackWhole() throws {
        let r = rollout([.setWeight(10), .analysis(analysis())])
        var (status, _) = RolloutStatus.start(r, now: 0)
        _ = status.handle(.tick, r, now: 10_000)
        _ = status.handle(.measured(few), r, now: 10_000)
        let data = try JSONEncoder().encode(status)
        #expect(try JSONDecoder().decode(RolloutStatus.self, from: data) == status)
    }

    @Test func theHistoryKeepsTheLastFiftyTransitions() {
        let r = rollout([.setWeight(10), .pause(nil)])
        var (status, _) = RolloutStatus.start(r, now: 0)
        for now in 1...60 {
            _ = status.handle(.abort, r, now: Int64(now * 2))
            _ = status.handle(.retry, r, now: Int64(now * 2 + 1))
        }
        #expect(status.history.count == RolloutStatus.maxHistory)
        #expect(status.history.last?.at == 121)
    }
}

@Suite("Rollouts: reading and writing")
struct RolloutParseTests {
    @Test func aRolloutReadsBackWhatItWrites() throws {
        let original = try Rollout.parse(
            """
            kind: Rollout
            name: orders-v2
            service: orders
            stable: v1
            canary: v2
            failureLimit: 1
            inconclusiveLimit: 4
            steps:
              - setHeaderRoute: {match: [{name: X-Beta, value: "1"}]}
              - setMirrorRoute: {percent: 12.5}
              - mirror: {percent: 5}
              - setWeight: 10
              - pause: {duration: 30s}
              - analysis: {successRate: 99.5, p99: 250ms, interval: 20s, minRequests: 40, count: 2, route: canary}
              - setWeight: 50
              - pause: {}
            webhooks:
              preRollout: http://127.0.0.1:9000/pre
              rollback: https://ci.example/rollback?x=1
              timeout: 2s
              retries: 1
            """
        )
        #expect(original.steps.count == 8 && original.failureLimit == 1 && original.inconclusiveLimit == 4)
        #expect(original.steps[0] == .setHeaderRoute([HeaderMatch(name: "x-beta", test: .exact("1"))]))
        #expect(original.steps[2] == .mirror(5), "mirror is setMirrorRoute's other name")
        #expect(original.steps[7] == .pause(nil))
        let encoded = try String(decoding: JSONEncoderForTests.encode(original), as: UTF8.self)
        #expect(try Rollout.parse(encoded) == original)
    }

    @Test func whatIsWrongIsRefusedWithEveryPathAndReason() {
        let text = """
            name: Bad
            service: orders
            stable: v1
            canary: v1
            steps:
              - setWeight: 101
              - pause: {duration: 10ms}
              - analysis: {interval: 30s}
              - {setWeight: 10, pause: {}}
              - analysis: {successRate: 99, route: other}
              - setMirrorRoute: {}
            webhooks: {preRollout: "ftp://x", timeout: 5m}
            """
        #expect {
            try Rollout.parse(text)
        } throws: { error in
            let paths = Set((error as? ConfigErrors)?.errors.map(\.path) ?? [])
            return paths == [
                "name", "canary", "steps[0].setWeight", "steps[1].pause.duration", "steps[2].analysis", "steps[3]",
                "steps[4].analysis.route", "steps[5].setMirrorRoute.percent", "webhooks.preRollout", "webhooks.timeout",
            ]
        }
        #expect(throws: ConfigErrors.self) {
            try Rollout.parse("name: r\nservice: orders\nstable: v1\ncanary: v2\nsteps: []")
        }
    }
}

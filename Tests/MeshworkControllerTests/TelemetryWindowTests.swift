import MeshworkModel
import Synchronization
import Testing

@testable import MeshworkController

/// A rollout's analysis window counts what its canary answered in it: for a service being
/// analysed, reports are kept by the second they arrived, so a window that begins partway
/// through a 10-second slot does not count the slot's earlier reports (issue 19: consecutive
/// measurements counted the same requests twice, and a window with no traffic of its own
/// could pass or fail on the requests before it).
@Suite("Telemetry: analysis windows")
struct TelemetryWindowTests {
    final class Clock: Sendable {
        let seconds = Atomic<Int>(0)
    }

    private func report(ok: UInt64, failed: UInt64) -> TelemetryReport {
        TelemetryReport(
            service: "orders",
            seconds: 1,
            edges: [
                EdgeReport(direction: "inbound", peer: "web", classes: [0, ok, 0, 0, failed], latency: [[900, ok]])
            ]
        )
    }

    @Test func aWindowOfAnAnalysedServiceCountsOnlyTheReportsThatArrivedInIt() throws {
        let clock = Clock()
        let store = TelemetryStore(now: { clock.seconds.load(ordering: .relaxed) })
        store.analyse(services: ["orders"])
        clock.seconds.store(11, ordering: .relaxed)
        try store.add(report(ok: 0, failed: 40), instance: "orders-2")
        clock.seconds.store(16, ordering: .relaxed)
        try store.add(report(ok: 30, failed: 0), instance: "orders-2")
        clock.seconds.store(17, ordering: .relaxed)
        // The window of the last 3 s (from second 14) has only the second report.
        let window = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 3)
        #expect(window.requests == 30 && window.successRate == 100, "\(window)")
        // A window after the traffic stopped has nothing: inconclusive, never a verdict.
        clock.seconds.store(19, ordering: .relaxed)
        let quiet = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 2)
        #expect(quiet.requests == 0 && quiet.successRate == nil, "\(quiet)")
        // A longer window has both.
        let both = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 10)
        #expect(both.requests == 70, "\(both)")
    }

    @Test func aServiceNotAnalysedIsCountedByItsTenSecondSlots() throws {
        let clock = Clock()
        let store = TelemetryStore(now: { clock.seconds.load(ordering: .relaxed) })
        clock.seconds.store(11, ordering: .relaxed)
        try store.add(report(ok: 0, failed: 40), instance: "orders-2")
        clock.seconds.store(17, ordering: .relaxed)
        // (The slot of seconds 10-19 overlaps the window: the coarse view, for the API.)
        let window = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 3)
        #expect(window.requests == 40, "\(window)")
        // Analysed from now on: what arrives from now is kept by the second.
        store.analyse(services: ["orders"])
        let fine = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 3)
        #expect(fine.requests == 0, "\(fine)")
        // And no longer: the one-second slots go.
        try store.add(report(ok: 5, failed: 0), instance: "orders-2")
        store.analyse(services: [])
        store.analyse(services: ["orders"])
        let dropped = store.figures(service: "orders", instances: ["orders-2"], windowSeconds: 3)
        #expect(dropped.requests == 0, "\(dropped)")
    }
}

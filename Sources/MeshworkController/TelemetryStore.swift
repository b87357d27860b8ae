import Histogram
import MeshworkModel
import NIOConcurrencyHelpers

/// The sidecars' reports, kept as rolling windows: per instance and per edge (caller ->
/// callee), 10-second slots for the last 10 minutes. Memory is bounded whatever the
/// traffic: a fixed number of slots per series, each with five counters and a sparse
/// histogram of at most a few hundred buckets; series with nothing in the last 10 minutes
/// are dropped.
///
/// Bounded per instance too, so one misbehaving credential cannot starve the others: each
/// instance keeps at most `maxPeersPerInstance` edges (new peers beyond are dropped and
/// counted), sends at most `reportsPerSecond` reports (a burst of `reportBurst`; more are
/// refused), and latencies are quantized to two significant digits (at most a few hundred
/// buckets per slot whatever values it sends). Counts add saturating: a report can make a
/// figure wrong, never the controller crash.
final class TelemetryStore: Sendable {
    static let slotSeconds = 10
    static let slots = 60
    static let maxSeries = 50_000
    static let maxPeersPerInstance = 256
    static let reportBurst = 20.0
    /// Reports per second an instance may send (a sidecar sends at most 10: its
    /// shortest `telemetryInterval` is 100ms).
    static let reportsPerSecond = 10.0

    private struct Slot {
        var index: Int
        var classes: [UInt64] = [0, 0, 0, 0, 0]
        var latency: [UInt64: UInt64] = [:]

        mutating func add(_ edge: EdgeReport) {
            for (i, count) in edge.classes.prefix(5).enumerated() { classes[i] = saturating(classes[i], count) }
            for pair in edge.latency where pair.count == 2 {
                let micros = TelemetryStore.quantize(pair[0])
                latency[micros] = saturating(latency[micros] ?? 0, pair[1])
            }
        }
    }

    private struct Series {
        var slots: [Slot] = []
        /// One-second slots (index: the second a report arrived) of the last
        /// `slots * slotSeconds` seconds, kept only for the instances of services a rollout
        /// analyses: a window then counts what arrived in it, not the 10 s slot around its
        /// start.
        var fine: [Slot] = []
        /// When the first report began (seconds), for the rate of a young series.
        var firstSecond: Int

        mutating func add(_ edge: EdgeReport, at slot: Int) {
            if slots.last?.index != slot { slots.append(Slot(index: slot)) }
            slots[slots.count - 1].add(edge)
            let oldest = slot - TelemetryStore.slots + 1
            if let first = slots.first, first.index < oldest { slots.removeAll { $0.index < oldest } }
        }

        mutating func addFine(_ edge: EdgeReport, at second: Int) {
            if fine.last?.index != second { fine.append(Slot(index: second)) }
            fine[fine.count - 1].add(edge)
            let oldest = second - TelemetryStore.slots * TelemetryStore.slotSeconds + 1
            if let first = fine.first, first.index < oldest { fine.removeAll { $0.index < oldest } }
        }
    }

    private enum Key: Hashable {
        case instance(service: String, id: String)
        case edge(source: String, target: String)
        /// The callers' view of one route rule's share to one version subset of a service
        /// being analysed (their outbound edges): what `analysis.route` measures.
        case route(service: String, rule: String, backend: String)
    }

    private struct Reporter {
        var peers: Set<String> = []
        var tokens = TelemetryStore.reportBurst
        var lastSecond: Int
    }

    private struct State {
        var series: [Key: Series] = [:]
        var reporters: [String: Reporter] = [:]
        /// The services whose instances keep one-second slots (`analyse(services:)`).
        var analysed: Set<String> = []
    }

    /// Why a report was not (wholly) taken.
    enum Refusal: Error {
        case rateLimited
    }

    private let state = NIOLockedValueBox(State())
    private let now: @Sendable () -> Int

    /// `micros` to two significant digits (the highest value of its bucket), like the
    /// merged histograms: 1234 -> 1239, 56789 -> 56999.
    static func quantize(_ micros: UInt64) -> UInt64 {
        var scale: UInt64 = 1
        var value = micros
        while value >= 100 {
            value /= 10
            scale *= 10
        }
        let (high, overflow) = (value * scale).addingReportingOverflow(scale - 1)
        return overflow ? .max : high
    }

    /// `now`: seconds on a monotonic clock.
    init(now: @escaping @Sendable () -> Int) {
        self.now = now
    }

    /// Adds one sidecar's report. The instance's own service is its callee for every
    /// inbound edge (the server side's view, as `linkerd viz stat` shows). Returns how many
    /// edges were dropped by the instance's peer quota; throws when the instance reports
    /// faster than `reportsPerSecond` beyond its burst.
    @discardableResult
    func add(_ report: TelemetryReport, instance: String, reporter: String? = nil) throws(Refusal) -> Int {
        let reporter = reporter ?? "instance:\(instance)"
        let now = self.now()
        let slot = now / Self.slotSeconds
        let began = now - Int(report.seconds.rounded(.up))
        let dropped = state.withLockedValue { (state: inout State) -> Int? in
            var quota = state.reporters[reporter] ?? Reporter(lastSecond: now)
            quota.tokens = min(
                Self.reportBurst,
                quota.tokens + Self.reportsPerSecond * Double(now - quota.lastSecond)
            )
            quota.lastSecond = now
            guard quota.tokens >= 1 else {
                state.reporters[reporter] = quota
                return nil
            }
            quota.tokens -= 1
            var dropped = 0
            for edge in report.edges where edge.direction == "inbound" {
                if !quota.peers.contains(edge.peer) {
                    guard quota.peers.count < Self.maxPeersPerInstance else {
                        dropped += 1
                        continue
                    }
                    quota.peers.insert(edge.peer)
                }
                let keys: [Key] = [
                    .instance(service: report.service, id: instance),
                    .edge(source: edge.peer, target: report.service),
                ]
                for key in keys {
                    if state.series[key] == nil, state.series.count >= Self.maxSeries { continue }
                    state.series[key, default: Series(firstSecond: began)].add(edge, at: slot)
                }
                if state.analysed.contains(report.service) {
                    state.series[keys[0]]?.addFine(edge, at: now)
                }
            }
            // Callers' edges to a subset by a route rule, for the services a rollout analyses
            // (one peer of the reporter's quota each).
            for edge in report.edges where edge.direction == "outbound" && state.analysed.contains(edge.peer) {
                guard let rule = edge.route, let backend = edge.backend else { continue }
                let peer = "route \(edge.peer) \(rule) \(backend)"
                if !quota.peers.contains(peer) {
                    guard quota.peers.count < Self.maxPeersPerInstance else {
                        dropped += 1
                        continue
                    }
                    quota.peers.insert(peer)
                }
                let key = Key.route(service: edge.peer, rule: rule, backend: backend)
                if state.series[key] == nil, state.series.count >= Self.maxSeries { continue }
                state.series[key, default: Series(firstSecond: began)].add(edge, at: slot)
                state.series[key]?.addFine(edge, at: now)
            }
            state.reporters[reporter] = quota
            // Forget what has nothing left in the window, and reporters gone as long.
            if state.series.count > 64, slot % 6 == 0 {
                state.series = state.series.filter { ($0.value.slots.last?.index ?? 0) > slot - Self.slots }
                state.reporters = state.reporters.filter { now - $0.value.lastSecond < Self.slots * Self.slotSeconds }
            }
            return dropped
        }
        guard let dropped else { throw .rateLimited }
        return dropped
    }

    /// Golden metrics per service (with its instances) over the last `window` seconds.
    func stats(windowSeconds: Int, service: String?) -> [ServiceStats] {
        let merged = merge(windowSeconds: windowSeconds)
        var byService: [String: [(String, Merged)]] = [:]
        for (key, value) in merged {
            guard case .instance(let name, let id) = key, service == nil || service == name else { continue }
            byService[name, default: []].append((id, value))
        }
        return byService.keys.sorted().map { name in
            let instances = byService[name, default: []].sorted { $0.0 < $1.0 }
            var total = Merged()
            for (_, value) in instances { total.add(value) }
            return ServiceStats(
                service: name,
                metrics: total.golden(),
                instances: instances.map { InstanceStats(instance: $0.0, metrics: $0.1.golden()) }
            )
        }
    }

    /// Keeps one-second slots for the instances of `services` (those a rollout analyses)
    /// from now on, and drops them for the others.
    func analyse(services: Set<String>) {
        state.withLockedValue { state in
            guard state.analysed != services else { return }
            for key in state.series.keys {
                switch key {
                case .instance(let service, _) where state.analysed.contains(service) && !services.contains(service):
                    state.series[key]?.fine = []
                case .route(let service, _, _) where !services.contains(service):
                    state.series[key] = nil
                default:
                    continue
                }
            }
            state.analysed = services
        }
    }

    /// What the given instances of `service` answered over the last `windowSeconds`: a
    /// rollout's analysis of its canary, from the canary's own (server-side) reports. For a
    /// service being analysed (`analyse(services:)`), the reports that arrived in the
    /// window, by the second; else the 10-second slots that overlap it. 5xx answers are the
    /// failures.
    ///
    /// With `rule` (`route/rule`) and `backend` (a subset cluster), the callers' outbound
    /// edges of that rule to that subset instead: one rule's canary share, as its callers
    /// saw it (`analysis.route`); kept for analysed services only.
    func figures(
        service: String,
        instances: Set<String>,
        windowSeconds: Int,
        rule: String? = nil,
        backend: String? = nil
    ) -> AnalysisFigures {
        let now = self.now()
        let start = now - max(1, windowSeconds)
        var merged = Merged()
        state.withLockedValue { state in
            let fine = state.analysed.contains(service)
            let oldest = fine ? start : start / Self.slotSeconds
            let keys: [Key] =
                if let rule, let backend {
                    [.route(service: service, rule: rule, backend: backend)]
                } else {
                    instances.map { .instance(service: service, id: $0) }
                }
            for key in keys {
                guard let series = state.series[key] else { continue }
                for slot in fine ? series.fine : series.slots where slot.index >= oldest {
                    for i in merged.classes.indices {
                        merged.classes[i] = saturating(merged.classes[i], slot.classes[i])
                    }
                    for (micros, count) in slot.latency { _ = merged.latency.record(micros, count: count) }
                }
            }
        }
        let requests = merged.classes.reduce(0, saturating)
        return AnalysisFigures(
            requests: Int(min(requests, UInt64(Int.max))),
            successRate: requests == 0 ? nil : 100 * (1 - Double(merged.classes[4]) / Double(requests)),
            p99: merged.latency.totalCount == 0 ? nil : Double(merged.latency.valueAtPercentile(99)) / 1000
        )
    }

    /// Golden metrics per edge over the last `window` seconds.
    func edges(windowSeconds: Int) -> [EdgeStats] {
        merge(windowSeconds: windowSeconds).compactMap { key, value -> EdgeStats? in
            guard case .edge(let source, let target) = key else { return nil }
            return EdgeStats(
                source: source,
                target: target,
                mtls: source != "unauthenticated",
                metrics: value.golden()
            )
        }
        .sorted { ($0.source, $0.target) < ($1.source, $1.target) }
    }

    /// Per service, each 10-second slot of the last `window` seconds (the servers' view),
    /// oldest first: what the dashboard charts.
    func series(windowSeconds: Int) -> [ServiceSeries] {
        let now = self.now()
        let current = now / Self.slotSeconds
        let slotCount = max(1, min(Self.slots, (windowSeconds + Self.slotSeconds - 1) / Self.slotSeconds))
        let oldest = current - slotCount + 1
        let all = state.withLockedValue { $0.series }
        var byService: [String: [Merged]] = [:]
        for (key, value) in all {
            guard case .instance(let service, _) = key else { continue }
            var slots = byService[service] ?? Array(repeating: Merged(), count: slotCount)
            for slot in value.slots where slot.index >= oldest && slot.index <= current {
                let i = slot.index - oldest
                for c in slots[i].classes.indices {
                    slots[i].classes[c] = saturating(slots[i].classes[c], slot.classes[c])
                }
                for (micros, count) in slot.latency { _ = slots[i].latency.record(micros, count: count) }
            }
            byService[service] = slots
        }
        return byService.keys.sorted().map { service in
            ServiceSeries(
                service: service,
                points: byService[service, default: []].enumerated().map { i, merged in
                    let golden = merged.golden()
                    return SeriesPoint(
                        secondsAgo: now - (oldest + i) * Self.slotSeconds,
                        requests: golden.requests,
                        failures: golden.failures,
                        p50Ms: golden.p50Ms,
                        p99Ms: golden.p99Ms
                    )
                }
            )
        }
    }

    private struct Merged {
        var classes: [UInt64] = [0, 0, 0, 0, 0]
        var latency = Histogram<UInt64>(
            lowestDiscernibleValue: 1,
            highestTrackableValue: 60_000_000,
            numberOfSignificantValueDigits: .two
        )
        var seconds = 0

        mutating func add(_ other: Merged) {
            for i in classes.indices { classes[i] = saturating(classes[i], other.classes[i]) }
            latency.add(other.latency)
            seconds = max(seconds, other.seconds)
        }

        func golden() -> GoldenMetrics {
            let requests = classes.reduce(0, saturating)
            func ms(_ percentile: Double) -> Double? {
                latency.totalCount == 0 ? nil : Double(latency.valueAtPercentile(percentile)) / 1000
            }
            return GoldenMetrics(
                requests: requests,
                failures: classes[4],
                rps: seconds > 0 ? Double(requests) / Double(seconds) : 0,
                successRate: requests == 0 ? 1 : 1 - Double(classes[4]) / Double(requests),
                p50Ms: ms(50),
                p95Ms: ms(95),
                p99Ms: ms(99)
            )
        }
    }

    private func merge(windowSeconds: Int) -> [Key: Merged] {
        let now = self.now()
        let current = now / Self.slotSeconds
        let slotCount = max(1, min(Self.slots, (windowSeconds + Self.slotSeconds - 1) / Self.slotSeconds))
        let oldest = current - slotCount + 1
        let all = state.withLockedValue { $0.series }
        var result: [Key: Merged] = [:]
        for (key, value) in all {
            var merged = Merged()
            for slot in value.slots where slot.index >= oldest {
                for i in merged.classes.indices { merged.classes[i] = saturating(merged.classes[i], slot.classes[i]) }
                for (micros, count) in slot.latency { _ = merged.latency.record(micros, count: count) }
            }
            guard merged.classes.contains(where: { $0 > 0 }) else { continue }
            // The rate's denominator: the window, or as much of it as the series has lived.
            let windowStart = now - slotCount * Self.slotSeconds
            merged.seconds = max(1, now - max(windowStart, value.firstSecond))
            result[key] = merged
        }
        return result
    }
}

/// `a + b`, or the largest value when that overflows.
private func saturating(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? .max : sum
}

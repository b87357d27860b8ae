import Foundation
import MeshworkDemo
import Prometheus

/// The demo's live view: every second, each service's and instance's request rate, success
/// rate and p50/p99 latency (from the sidecars' inbound metrics), the edge as the load
/// generator saw it, and each instance's health in the registry. Also injects the faults.
actor DemoView {
    private let mesh: DemoMesh
    private let redraw: Bool
    private var previous: [String: InboundSample] = [:]
    private var elapsed = 0
    private var faultsStartedAt: Int?
    private var ejectedAt: Int?
    /// Requests each instance answered before and after the faults.
    private var before: [String: Double] = [:]
    private var after: [String: Double] = [:]

    /// When the rollouts run: orders v2 this long after the faults start.
    static let rolloutAfterFaults = 4
    private var rolloutStartedAt: Int?
    private var badRolloutStarted = false
    /// Each rollout's outcome, the first time it is seen (for the summary).
    private var outcomes: [(name: String, at: Int, line: String)] = []

    /// `--ha`: when the leader was SIGKILLed, who led next and how soon, what the load saw
    /// in the 10 s after, and when the killed controller was started again.
    private var killedAt: Int?
    private var failover: (killed: String, next: String?, after: Duration)?
    private var afterKill = (requests: 0, failed: 0)
    private var restartedAt: Int?
    static let restartAfterKill = 8

    static let slowInstance = "orders-2"
    static let failingInstance = "inventory-1"
    static let slowBy: Duration = .milliseconds(300)

    init(mesh: DemoMesh, redraw: Bool) {
        self.mesh = mesh
        self.redraw = redraw
    }

    func run(faultsAt: Int, duration: Int) async {
        let instances = await mesh.instances
        for instance in instances { previous[instance.name] = InboundSample(instance.registry) }
        _ = mesh.load.takeSecond()
        var next = ContinuousClock.now
        while !Task.isCancelled, duration == 0 || elapsed < duration {
            next += .seconds(1)
            try? await Task.sleep(until: next)
            if Task.isCancelled { return }
            elapsed += 1
            if elapsed == faultsAt {
                for instance in instances where instance.name == Self.slowInstance { instance.app.setSlow(Self.slowBy) }
                for instance in instances where instance.name == Self.failingInstance { instance.app.setFailing(500) }
                faultsStartedAt = elapsed
            }
            if elapsed == faultsAt + Self.rolloutAfterFaults {
                await mesh.startGoodRollout()
                rolloutStartedAt = elapsed
            }
            await stepControlPlane(duration: duration)
            let frame = await tick(instances)
            say(redraw ? "\u{1B}[H\u{1B}[J" + frame : frame)
        }
    }

    /// `--ha`: once both rollouts are decided (the leader drives them; or, in a bounded
    /// demo, 14 s before its end), SIGKILL the leading controller; start it again
    /// `restartAfterKill` s later.
    private func stepControlPlane(duration: Int) async {
        guard mesh.ha else { return }
        if killedAt == nil, outcomes.count >= 2 || (duration > 0 && elapsed >= duration - 14) {
            killedAt = elapsed
            Task {
                let result = await mesh.killLeader()
                await self.failedOver(result)
            }
        }
        if let killedAt, restartedAt == nil, elapsed >= killedAt + Self.restartAfterKill, let failover {
            await mesh.restartController(failover.killed)
            restartedAt = elapsed
        }
    }

    private func failedOver(_ result: (killed: String, next: String?, after: Duration)?) {
        failover = result
    }

    private func controlPlaneRow() async -> String? {
        guard mesh.ha else { return nil }
        let leader = await mesh.leader()
        let states = await mesh.controllerStates().map { state in
            state.name + (state.running ? (state.name == leader ? " (leader)" : "") : " (killed)")
        }
        var row = "controllers on etcd: " + states.joined(separator: ", ")
        if let failover, let killedAt {
            row += String(
                format: "   %@ SIGKILLed at %02d:%02d; %@ led %.1f s later",
                failover.killed,
                killedAt / 60,
                killedAt % 60,
                failover.next ?? "nobody",
                Double(failover.after.components.attoseconds) / 1e18 + Double(failover.after.components.seconds)
            )
        }
        return row
    }

    private func tick(_ instances: [DemoMesh.Instance]) async -> String {
        let health = await mesh.registryHealth()
        let edge = mesh.load.takeSecond()
        if let killedAt, elapsed > killedAt, elapsed <= killedAt + 10 {
            afterKill.requests += edge.requests
            afterKill.failed += edge.requests - edge.succeeded
        }
        var rows: [String] = []
        let clock = String(format: "%02d:%02d", elapsed / 60, elapsed % 60)
        var header = "meshwork demo  \(clock)  offered \(await mesh.rate) req/s through the gateway"
        if let start = faultsStartedAt {
            header += String(
                format: "   faults since %02d:%02d: %@ slow (+300 ms), %@ failing (500)",
                start / 60,
                start % 60,
                Self.slowInstance,
                Self.failingInstance
            )
        } else {
            header += "   (faults not yet started)"
        }
        rows.append(header)
        rows.append(Self.row("SERVICE", "INSTANCE", "REGISTRY", "RPS", "SUCCESS", "P50", "P99"))
        let edgeLatencies = edge.latencies.map { $0.milliseconds }.sorted()
        rows.append(
            Self.row(
                "edge",
                "load->gateway",
                "",
                String(edge.requests),
                Self.percent(Double(edge.succeeded), of: Double(edge.requests)),
                Self.ms(Self.exact(edgeLatencies, 0.5)),
                Self.ms(Self.exact(edgeLatencies, 0.99))
            )
        )
        for service in DemoMesh.services.reversed() {
            var total = InboundDelta()
            var lines: [String] = []
            for instance in instances where instance.service == service.name {
                let sample = InboundSample(instance.registry)
                let delta = sample.delta(from: previous[instance.name])
                previous[instance.name] = sample
                total.add(delta)
                // (The latency-aware share is counted until the rollout moves orders' traffic.)
                if faultsStartedAt == nil {
                    before[instance.name, default: 0] += delta.requests
                } else if rolloutStartedAt == nil {
                    after[instance.name, default: 0] += delta.requests
                }
                var state = health[instance.name] ?? "gone"
                if instance.name == Self.slowInstance, faultsStartedAt != nil { state += " (slow)" }
                if instance.name == DemoMesh.badInstance { state += " (v3, bad)" }
                if instance.name == Self.failingInstance, faultsStartedAt != nil {
                    state += " (failing)"
                    if ejectedAt == nil, health[instance.name] != "healthy" { ejectedAt = elapsed }
                }
                lines.append(
                    Self.row(
                        "",
                        instance.name,
                        state,
                        String(format: "%.0f", delta.requests),
                        Self.percent(delta.succeeded, of: delta.requests),
                        Self.ms(delta.quantile(0.5)),
                        Self.ms(delta.quantile(0.99))
                    )
                )
            }
            rows.append(
                Self.row(
                    service.name,
                    "(all)",
                    "",
                    String(format: "%.0f", total.requests),
                    Self.percent(total.succeeded, of: total.requests),
                    Self.ms(total.quantile(0.5)),
                    Self.ms(total.quantile(0.99))
                )
            )
            rows += lines
        }
        rows += await rolloutRows()
        if let row = await controlPlaneRow() { rows.append(row) }
        return rows.joined(separator: "\n") + "\n\n"
    }

    /// A line per rollout (weights, step, the decision), and the demo's next move.
    private func rolloutRows() async -> [String] {
        let rollouts = await mesh.rollouts()
        var rows: [String] = []
        for r in rollouts {
            rows.append(
                "rollout \(r.name)  \(r.stable) -> \(r.canary)  \(r.phase)  step \(min(r.step + 1, r.steps)) of \(r.steps)"
                    + "  \(r.stable) \(100 - r.weight)% / \(r.canary) \(r.weight)%  \(r.message)"
            )
            if ["Promoted", "Degraded", "Aborted"].contains(r.phase), !outcomes.contains(where: { $0.name == r.name }) {
                outcomes.append((r.name, elapsed, "\(r.phase): \(r.message)"))
            }
        }
        if !badRolloutStarted, rollouts.contains(where: { $0.name == "orders-v2" && $0.phase == "Promoted" }) {
            badRolloutStarted = true
            await mesh.startBadRollout()
        }
        return rows
    }

    func printSummary() {
        let total = mesh.load.total
        let latencies = total.latencies.map { $0.milliseconds }.sorted()
        sayLine(
            String(
                format: "summary: %d requests through the gateway in %d s, %@ succeeded, p50 %@, p99 %@",
                total.requests,
                elapsed,
                Self.percent(Double(total.succeeded), of: Double(total.requests)),
                Self.ms(Self.exact(latencies, 0.5)),
                Self.ms(Self.exact(latencies, 0.99))
            )
        )
        for outcome in outcomes {
            sayLine("rollout \(outcome.name): \(outcome.line) (at \(outcome.at) s)")
        }
        if let started = rolloutStartedAt, outcomes.isEmpty {
            sayLine("rollout orders-v2: started at \(started) s, not finished when the demo ended")
        }
        if mesh.ha {
            if let killedAt, let failover {
                let seconds =
                    Double(failover.after.components.seconds) + Double(failover.after.components.attoseconds) / 1e18
                sayLine(
                    String(
                        format:
                            "control plane: %@ (the leader) SIGKILLed at %d s; %@ led %.1f s later; in the 10 s after, %d requests through the gateway, %d failed%@",
                        failover.killed,
                        killedAt,
                        failover.next ?? "no controller",
                        seconds,
                        afterKill.requests,
                        afterKill.failed,
                        restartedAt.map { "; \(failover.killed) started again at \($0) s" } ?? ""
                    )
                )
            } else {
                sayLine("control plane: the leader was not killed (run longer)")
            }
        }
        guard let start = faultsStartedAt else {
            sayLine("faults: not started (run longer than --faults-after)")
            return
        }
        if let ejectedAt {
            sayLine(
                "\(Self.failingInstance): failing since \(start) s, unhealthy in the registry \(ejectedAt - start) s later (ejected: the mesh stopped sending to it)"
            )
        } else {
            sayLine("\(Self.failingInstance): failing since \(start) s, still in the registry as healthy")
        }
        func share(_ counts: [String: Double]) -> Double {
            let orders = counts.filter { $0.key.hasPrefix("orders-") }.values.reduce(0, +)
            return orders > 0 ? 100 * (counts[Self.slowInstance] ?? 0) / orders : 0
        }
        sayLine(
            String(
                format:
                    "%@: %.0f%% of orders' requests before turning slow, %.0f%% after, until the rollout (latency-aware balancing)",
                Self.slowInstance,
                share(before),
                share(after)
            )
        )
    }

    // MARK: formatting

    static func row(_ columns: String...) -> String {
        let widths = [10, 15, 22, 7, 9, 10, 10]
        return zip(columns, widths).enumerated().map { index, pair in
            let (text, width) = pair
            return index < 3
                ? text.padding(toLength: width, withPad: " ", startingAt: 0)
                : String(repeating: " ", count: max(0, width - text.count)) + text
        }.joined(separator: " ")
    }

    static func percent(_ part: Double, of whole: Double) -> String {
        whole > 0 ? String(format: "%.1f%%", 100 * part / whole) : "-"
    }

    static func ms(_ value: Double?) -> String {
        guard let value else { return "-" }
        return value < 10 ? String(format: "%.1fms", value) : String(format: "%.0fms", value)
    }

    static func exact(_ sorted: [Double], _ q: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
    }
}

/// Writes to standard output at once (unbuffered: the view is read live, also through pipes).
func sayLine(_ text: String) {
    say(text + "\n")
}

func say(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

extension Duration {
    var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}

/// One sidecar's inbound listener counters: requests by status class and the latency
/// histogram's cumulative buckets, read from its Prometheus registry.
struct InboundSample {
    var byClass: [String: Double] = [:]
    var buckets: [Double: Double] = [:]

    init(_ registry: PrometheusCollectorRegistry) {
        let text = String(decoding: registry.emitToBuffer(), as: UTF8.self)
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && line.contains(#"listener="inbound""#) {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            if line.hasPrefix("meshwork_listener_requests_total{"), let label = Self.label("class", in: line) {
                byClass[label] = value
            } else if line.hasPrefix("meshwork_listener_request_duration_seconds_bucket{"),
                let le = Self.label("le", in: line)
            {
                buckets[le == "+Inf" ? .infinity : Double(le) ?? .infinity] = value
            }
        }
    }

    static func label(_ name: String, in line: Substring) -> String? {
        guard let start = line.range(of: "\(name)=\"") else { return nil }
        let rest = line[start.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }

    func delta(from old: InboundSample?) -> InboundDelta {
        var delta = InboundDelta()
        for (label, value) in byClass {
            let change = value - (old?.byClass[label] ?? 0)
            delta.requests += change
            if label != "5xx" { delta.succeeded += change }
        }
        for (le, value) in buckets { delta.buckets[le] = value - (old?.buckets[le] ?? 0) }
        return delta
    }
}

/// Requests in one interval, with their latency histogram (cumulative buckets by bound).
struct InboundDelta {
    var requests: Double = 0
    var succeeded: Double = 0
    var buckets: [Double: Double] = [:]

    mutating func add(_ other: InboundDelta) {
        requests += other.requests
        succeeded += other.succeeded
        for (le, count) in other.buckets { buckets[le, default: 0] += count }
    }

    /// The q-quantile in milliseconds, interpolated inside its bucket; nil with no requests.
    func quantile(_ q: Double) -> Double? {
        let sorted = buckets.sorted { $0.key < $1.key }
        guard let total = sorted.last?.value, total > 0 else { return nil }
        let rank = q * total
        var lowerBound = 0.0
        var lowerCount = 0.0
        for (bound, count) in sorted {
            if count >= rank {
                guard bound.isFinite else { return lowerBound * 1000 }
                let fraction = count > lowerCount ? (rank - lowerCount) / (count - lowerCount) : 0
                return (lowerBound + (bound - lowerBound) * fraction) * 1000
            }
            lowerBound = bound
            lowerCount = count
        }
        return lowerBound * 1000
    }
}

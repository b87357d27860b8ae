/// Where a rollout is, as a value: the controller feeds it events (the clock, measured
/// figures, webhook answers, operator commands) and carries out the effects it returns;
/// the route it implies is a function of it (`route(for:)`). Stored after every change,
/// so a restarted controller resumes where it was. Times are wall-clock milliseconds.
public struct RolloutStatus: Sendable, Hashable, Codable {
    public enum Phase: String, Sendable, Hashable, Codable, CaseIterable {
        /// Waiting for the pre-rollout webhook to accept.
        case pending = "Pending"
        case progressing = "Progressing"
        /// Held: by an operator, an indefinite pause step, too many inconclusive
        /// measurements, or a refused promotion; `message` says which.
        case paused = "Paused"
        /// Every step passed: all traffic on the canary.
        case promoted = "Promoted"
        /// Rolled back by a failed analysis: all traffic on stable.
        case degraded = "Degraded"
        /// Rolled back by an operator: all traffic on stable.
        case aborted = "Aborted"
    }

    public var phase: Phase = .pending
    /// The current step (`steps.count` once every step has passed).
    public var step = 0
    /// The canary's share of requests, in percent.
    public var weight = 0
    /// The `setHeaderRoute` step whose headers now send requests to the canary.
    public var headerStep: Int?
    /// The share mirrored to the canary, in percent.
    public var mirror = 0.0
    public var stepStartedAt: Int64 = 0
    /// The start of the analysis window being measured.
    public var windowStart: Int64 = 0
    /// A measurement asked for and not answered yet.
    public var measuring = false
    /// A webhook called and not answered yet.
    public var awaiting: RolloutWebhookKind?
    public var successes = 0
    public var failures = 0
    /// Inconclusive measurements in a row.
    public var inconclusive = 0
    /// The last measurement, for operators.
    public var figures: AnalysisFigures?
    public var message = ""
    /// The last `maxHistory` transitions, oldest first.
    public var history: [RolloutHistoryEntry] = []

    public static let maxHistory = 50

    public init() {}

    public var isTerminal: Bool { phase == .promoted || phase == .degraded || phase == .aborted }
}

public enum RolloutWebhookKind: String, Sendable, Hashable, Codable {
    case preRollout
    case confirmPromotion
    case rollback
}

/// A measurement of the canary over one analysis window.
public struct AnalysisFigures: Sendable, Hashable, Codable {
    public var requests: Int
    /// Answers that were not 5xx (nor a mesh error), in percent; nil without requests.
    public var successRate: Double?
    /// Milliseconds; nil without requests.
    public var p99: Double?

    public init(requests: Int, successRate: Double?, p99: Double?) {
        self.requests = requests
        self.successRate = successRate
        self.p99 = p99
    }
}

public struct RolloutHistoryEntry: Sendable, Hashable, Codable {
    public var at: Int64
    public var step: Int
    public var phase: RolloutStatus.Phase
    public var weight: Int
    public var message: String
}

public enum RolloutEvent: Sendable, Hashable {
    case tick
    case measured(AnalysisFigures)
    case webhook(RolloutWebhookKind, accepted: Bool, message: String)
    case promote
    case abort
    case retry
    case pause
    case resume
    /// A controller began to lead (a restart, or another took over): an analysis under
    /// way measures a new window from now, since the reports of the last one are not here.
    case restored
}

public enum RolloutEffect: Sendable, Hashable {
    /// Measure the canary over [since, now] for this analysis, and answer `.measured`.
    case measure(RolloutAnalysis, since: Int64)
    /// POST to the webhook and answer `.webhook` (`rollback` is told only: no answer).
    case callWebhook(RolloutWebhookKind, url: String)
}

/// What an outcome of one measurement is.
public enum AnalysisOutcome: Sendable, Hashable {
    case successful
    case failed(String)
    case inconclusive(String)

    public init(_ figures: AnalysisFigures, against analysis: RolloutAnalysis) {
        guard figures.requests >= analysis.minRequests, figures.requests > 0 else {
            self = .inconclusive("\(figures.requests) requests of the \(analysis.minRequests) needed")
            return
        }
        var failed: [String] = []
        if let wanted = analysis.successRate {
            if let rate = figures.successRate {
                if rate < wanted { failed.append("success rate \(Self.format(rate))% < \(Self.format(wanted))%") }
            } else {
                self = .inconclusive("no success rate")
                return
            }
        }
        if let wanted = analysis.p99 {
            let limit = Double(wanted.components.seconds) * 1000 + Double(wanted.components.attoseconds) / 1e15
            if let p99 = figures.p99 {
                if p99 > limit { failed.append("p99 \(Self.format(p99)) ms > \(Self.format(limit)) ms") }
            } else {
                self = .inconclusive("no latency")
                return
            }
        }
        self =
            failed.isEmpty
            ? .successful : .failed(failed.joined(separator: ", ") + " over \(figures.requests) requests")
    }

    static func format(_ value: Double) -> String {
        let rounded = (value * 100).rounded() / 100
        return rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
    }
}

extension RolloutStatus {
    /// The status of a rollout just created (or retried) at `now`, and what to do.
    public static func start(_ rollout: Rollout, now: Int64) -> (RolloutStatus, [RolloutEffect]) {
        var status = RolloutStatus()
        let effects = status.begin(rollout, now: now, message: "created")
        return (status, effects)
    }

    private mutating func begin(_ rollout: Rollout, now: Int64, message: String) -> [RolloutEffect] {
        phase = .pending
        step = 0
        weight = 0
        headerStep = nil
        mirror = 0
        measuring = false
        successes = 0
        failures = 0
        inconclusive = 0
        figures = nil
        awaiting = nil
        if let url = rollout.webhooks.preRollout {
            awaiting = .preRollout
            record(now, "\(message): waiting for the pre-rollout webhook")
            return [.callWebhook(.preRollout, url: url)]
        }
        phase = .progressing
        record(now, message)
        return enter(rollout, now: now)
    }

    /// Applies `event` at `now`; returns what the controller must do.
    public mutating func handle(_ event: RolloutEvent, _ rollout: Rollout, now: Int64) -> [RolloutEffect] {
        switch event {
        case .tick:
            return tick(rollout, now: now)
        case .measured(let measured):
            return measured_(measured, rollout, now: now)
        case .webhook(let kind, let accepted, let why):
            return webhook(kind, accepted: accepted, why, rollout, now: now)
        case .promote:
            guard !isTerminal, phase != .pending, awaiting == nil else { return [] }
            phase = .progressing
            inconclusive = 0
            // Past the last step (the confirm-promotion webhook refused): it is asked again.
            if step >= rollout.steps.count {
                record(now, "promotion asked again by an operator")
                return enter(rollout, now: now)
            }
            record(now, "promoted past step \(step) by an operator")
            return next(rollout, now: now)
        case .abort:
            guard !isTerminal else { return [] }
            return rollBack(.aborted, "aborted by an operator", rollout, now: now)
        case .retry:
            guard phase == .degraded || phase == .aborted else { return [] }
            return begin(rollout, now: now, message: "retried by an operator")
        case .pause:
            guard phase == .progressing else { return [] }
            phase = .paused
            record(now, "paused by an operator")
            return []
        case .resume:
            // An indefinite pause step is ended by promoting it, not by resuming.
            guard phase == .paused, awaiting == nil else { return [] }
            if step < rollout.steps.count, case .pause(nil) = rollout.steps[step] { return [] }
            phase = .progressing
            inconclusive = 0
            if step >= rollout.steps.count {
                record(now, "resumed by an operator")
                return enter(rollout, now: now)
            }
            // A held analysis measures a new window from now.
            windowStart = now
            measuring = false
            record(now, "resumed by an operator")
            return tick(rollout, now: now)
        case .restored:
            guard phase == .progressing, awaiting == nil, step < rollout.steps.count,
                case .analysis = rollout.steps[step]
            else { return [] }
            windowStart = now
            measuring = false
            record(now, "analysis window begun again: this controller's telemetry starts now")
            return []
        }
    }

    /// Runs the steps from `step` that take no time, up to one that waits.
    private mutating func enter(_ rollout: Rollout, now: Int64) -> [RolloutEffect] {
        while step < rollout.steps.count {
            stepStartedAt = now
            switch rollout.steps[step] {
            case .setWeight(let value):
                weight = value
                record(now, "weight \(value)%")
            case .setHeaderRoute(let headers):
                headerStep = headers.isEmpty ? nil : step
                record(now, headers.isEmpty ? "header route ended" : "header route on")
            case .mirror(let percent):
                mirror = percent
                record(now, percent == 0 ? "mirror ended" : "mirroring \(AnalysisOutcome.format(percent))%")
            case .pause(let duration):
                if duration == nil {
                    phase = .paused
                    record(now, "paused until promoted")
                }
                return []
            case .analysis:
                windowStart = now
                successes = 0
                inconclusive = 0
                measuring = false
                return []
            }
            step += 1
        }
        // Every step passed.
        if let url = rollout.webhooks.confirmPromotion {
            awaiting = .confirmPromotion
            record(now, "waiting for the confirm-promotion webhook")
            return [.callWebhook(.confirmPromotion, url: url)]
        }
        return promote(now)
    }

    private mutating func promote(_ now: Int64) -> [RolloutEffect] {
        phase = .promoted
        weight = 100
        headerStep = nil
        mirror = 0
        awaiting = nil
        record(now, "promoted: all traffic on the canary")
        return []
    }

    private mutating func next(_ rollout: Rollout, now: Int64) -> [RolloutEffect] {
        step = min(step + 1, rollout.steps.count)
        measuring = false
        return enter(rollout, now: now)
    }

    private mutating func tick(_ rollout: Rollout, now: Int64) -> [RolloutEffect] {
        guard phase == .progressing, awaiting == nil, step < rollout.steps.count else { return [] }
        switch rollout.steps[step] {
        case .pause(let duration?):
            return now >= stepStartedAt + Self.milliseconds(duration) ? next(rollout, now: now) : []
        case .analysis(let analysis):
            guard !measuring, now >= windowStart + Self.milliseconds(analysis.interval) else { return [] }
            measuring = true
            return [.measure(analysis, since: windowStart)]
        default:
            return []
        }
    }

    private mutating func measured_(
        _ measured: AnalysisFigures,
        _ rollout: Rollout,
        now: Int64
    ) -> [RolloutEffect] {
        guard phase == .progressing, measuring, step < rollout.steps.count,
            case .analysis(let analysis) = rollout.steps[step]
        else { return [] }
        measuring = false
        windowStart = now
        figures = measured
        switch AnalysisOutcome(measured, against: analysis) {
        case .successful:
            inconclusive = 0
            successes += 1
            message = "analysis passed (\(successes) of \(analysis.count))"
            guard successes >= analysis.count else { return [] }
            record(now, "analysis passed")
            return next(rollout, now: now)
        case .failed(let why):
            failures += 1
            inconclusive = 0
            guard failures > rollout.failureLimit else {
                record(now, "analysis failed (\(failures) of \(rollout.failureLimit) tolerated): \(why)")
                return []
            }
            return rollBack(.degraded, "analysis failed: \(why)", rollout, now: now)
        case .inconclusive(let why):
            inconclusive += 1
            guard inconclusive > rollout.inconclusiveLimit else {
                message = "inconclusive (\(inconclusive) of \(rollout.inconclusiveLimit) tolerated): \(why)"
                return []
            }
            phase = .paused
            record(now, "paused: \(inconclusive) inconclusive measurements in a row: \(why)")
            return []
        }
    }

    private mutating func webhook(
        _ kind: RolloutWebhookKind,
        accepted: Bool,
        _ why: String,
        _ rollout: Rollout,
        now: Int64
    ) -> [RolloutEffect] {
        guard awaiting == kind else { return [] }
        awaiting = nil
        switch kind {
        case .preRollout:
            guard accepted else {
                // Nothing moved yet: `retry` asks again.
                phase = .aborted
                record(now, "the pre-rollout webhook refused: \(why)")
                return []
            }
            phase = .progressing
            record(now, "the pre-rollout webhook accepted")
            return enter(rollout, now: now)
        case .confirmPromotion:
            guard accepted else {
                phase = .paused
                record(now, "the confirm-promotion webhook refused: \(why)")
                return []
            }
            return promote(now)
        case .rollback:
            return []
        }
    }

    private mutating func rollBack(
        _ phase: Phase,
        _ why: String,
        _ rollout: Rollout,
        now: Int64
    ) -> [RolloutEffect] {
        self.phase = phase
        weight = 0
        headerStep = nil
        mirror = 0
        measuring = false
        awaiting = nil
        record(now, why + ": all traffic on stable")
        return rollout.webhooks.rollback.map { [.callWebhook(.rollback, url: $0)] } ?? []
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    private mutating func record(_ now: Int64, _ text: String) {
        message = text
        history.append(RolloutHistoryEntry(at: now, step: step, phase: phase, weight: weight, message: text))
        if history.count > Self.maxHistory { history.removeFirst(history.count - Self.maxHistory) }
    }

    /// The route the rollout implies now: the header rule (when on), then every other
    /// request split by weight, with the mirror.
    public func route(for rollout: Rollout) -> HTTPRoute {
        var route = HTTPRoute(name: rollout.routeName)
        route.parents = [rollout.service]
        let stable = RouteBackend(service: rollout.service, version: rollout.stable)
        let canary = RouteBackend(service: rollout.service, version: rollout.canary)
        if let headerStep, case .setHeaderRoute(let headers) = rollout.steps[headerStep] {
            var rule = RouteRule()
            rule.name = "header"
            var match = RouteMatch()
            match.headers = headers
            rule.matches = [match]
            rule.backends = [canary]
            route.rules.append(rule)
        }
        var rule = RouteRule()
        rule.name = "canary"
        var stableShare = stable
        stableShare.weight = 100 - weight
        var canaryShare = canary
        canaryShare.weight = weight
        rule.backends = [stableShare, canaryShare]
        if mirror > 0 {
            var copy = RouteFilter.Mirror(backend: canary)
            copy.percent = mirror
            rule.filters = [.mirror(copy)]
        }
        route.rules.append(rule)
        return route
    }
}

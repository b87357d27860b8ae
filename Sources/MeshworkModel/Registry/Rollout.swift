/// A progressive rollout of a new version of a service (`kind: Rollout`, issue 19): the
/// controller moves traffic from the stable version's instances to the canary's step by
/// step, through a route it owns (`rollout-<name>`), and rolls back by itself when the
/// canary's own figures fail an analysis. Both versions keep their names and metrics:
/// nothing is copied or renamed.
///
/// The shape follows Argo Rollouts' canary steps (`setWeight`, `pause`, `analysis`,
/// `setHeaderRoute`, `setMirrorRoute`), whose users know it, with the analysis built in:
/// the controller's own telemetry of the canary's instances, no query language.
public struct Rollout: Sendable, Hashable {
    public var name: String
    /// The service whose callers are moved.
    public var service: String
    /// The instances' `version` that serves now.
    public var stable: String
    /// The instances' `version` being rolled out.
    public var canary: String
    public var steps: [RolloutStep] = []
    /// Failed measurements tolerated (in all) before the rollout rolls back.
    public var failureLimit = 0
    /// Inconclusive measurements tolerated in a row before the rollout pauses for an
    /// operator (who promotes, retries or aborts it).
    public var inconclusiveLimit = 3
    public var webhooks = RolloutWebhooks()
    /// The registry revision it was created at.
    public var created: Int64 = 0

    public init(name: String, service: String, stable: String, canary: String) {
        self.name = name
        self.service = service
        self.stable = stable
        self.canary = canary
    }

    /// The route the controller writes for it.
    public var routeName: String { "rollout-" + name }

    public static let maxSteps = 64
}

public enum RolloutStep: Sendable, Hashable {
    /// The canary's share of requests, 0 to 100.
    case setWeight(Int)
    /// Hold: for a duration, or (nil) until promoted.
    case pause(Duration?)
    case analysis(RolloutAnalysis)
    /// Requests matching these headers go to the canary whatever the weight (A/B); an
    /// empty list ends the header route.
    case setHeaderRoute([HeaderMatch])
    /// This share of requests is also sent to the canary, its answers discarded; 0 ends it.
    case mirror(Double)
}

/// What the canary must show over each interval: a success rate (non-5xx answers, in
/// percent) at least, a p99 latency at most, over at least `minRequests` requests (fewer:
/// inconclusive, never a pass or a failure).
public struct RolloutAnalysis: Sendable, Hashable {
    public var successRate: Double?
    public var p99: Duration?
    public var interval: Duration = .seconds(30)
    public var minRequests = 20
    /// Successful measurements needed to pass the step.
    public var count = 1
    /// Only the requests of this rule of the rollout's route (`canary`, `header`): by
    /// default all the canary's.
    public var route: String?

    public init() {}
}

/// HTTP POSTs to whatever starts and stops instances (a scheduler, CI): before the first
/// step (`preRollout`: a refusal holds the rollout), before full promotion
/// (`confirmPromotion`: a refusal pauses it), after a rollback (`rollback`: told only).
public struct RolloutWebhooks: Sendable, Hashable {
    public var preRollout: String?
    public var confirmPromotion: String?
    public var rollback: String?
    public var timeout: Duration = .seconds(5)
    /// Tries after the first one, 1 s apart.
    public var retries = 2

    public init() {}

    public var isEmpty: Bool { preRollout == nil && confirmPromotion == nil && rollback == nil }
}

import MeshworkModel
import Prometheus

/// The controller's own metrics, served at `/metrics`: what it refused (by reason) and
/// what it issued.
final class ControllerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let refusals: [String: Counter]
    private let issuedByToken: Counter
    private let issuedByRenewal: Counter
    private let heartbeatsRenewed: Counter
    private let heartbeatsUnknown: Counter
    private let rolloutPhases: [String: Counter]
    private let analyses: [String: Counter]

    static let refusalReasons = [
        "unauthenticated", "forbidden", "join_token_invalid", "join_token_expired", "join_token_used",
        "csr_invalid", "renewal_invalid", "invalid_resource", "telemetry_rate_limited", "telemetry_series_quota",
    ]

    init() {
        var refusals: [String: Counter] = [:]
        for reason in Self.refusalReasons {
            refusals[reason] = registry.makeCounter(
                name: "meshwork_controller_api_refusals_total",
                labels: [("reason", reason)]
            )
        }
        self.refusals = refusals
        issuedByToken = registry.makeCounter(
            name: "meshwork_controller_certificates_issued_total",
            labels: [("via", "join_token")]
        )
        issuedByRenewal = registry.makeCounter(
            name: "meshwork_controller_certificates_issued_total",
            labels: [("via", "renewal")]
        )
        heartbeatsRenewed = registry.makeCounter(
            name: "meshwork_controller_heartbeats_total",
            labels: [("result", "renewed")]
        )
        heartbeatsUnknown = registry.makeCounter(
            name: "meshwork_controller_heartbeats_total",
            labels: [("result", "unknown_instance")]
        )
        var phases: [String: Counter] = [:]
        for phase in RolloutStatus.Phase.allCases {
            phases[phase.rawValue] = registry.makeCounter(
                name: "meshwork_controller_rollout_transitions_total",
                labels: [("phase", phase.rawValue)]
            )
        }
        rolloutPhases = phases
        var analyses: [String: Counter] = [:]
        for result in ["successful", "failed", "inconclusive"] {
            analyses[result] = registry.makeCounter(
                name: "meshwork_controller_rollout_analyses_total",
                labels: [("result", result)]
            )
        }
        self.analyses = analyses
    }

    /// A rollout entered `phase`.
    func rolloutEntered(_ phase: RolloutStatus.Phase) {
        rolloutPhases[phase.rawValue]?.increment()
    }

    /// One analysis measurement and its outcome.
    func analysed(_ outcome: AnalysisOutcome) {
        switch outcome {
        case .successful: analyses["successful"]?.increment()
        case .failed: analyses["failed"]?.increment()
        case .inconclusive: analyses["inconclusive"]?.increment()
        }
    }

    /// A heartbeat that renewed a lease, or one for an instance the registry does not hold
    /// (expired or deleted: its sidecar registers again).
    func heartbeat(known: Bool) {
        (known ? heartbeatsRenewed : heartbeatsUnknown).increment()
    }

    func refused(_ reason: String) {
        refusals[reason]?.increment()
    }

    func issued(via: String) {
        (via == "renewal" ? issuedByRenewal : issuedByToken).increment()
    }

    func text() -> [UInt8] {
        registry.emitToBuffer()
    }
}

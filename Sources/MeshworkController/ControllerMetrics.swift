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

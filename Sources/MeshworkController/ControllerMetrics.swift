import Prometheus

/// The controller's own metrics, served at `/metrics`: what it refused (by reason) and
/// what it issued.
final class ControllerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let refusals: [String: Counter]
    private let issuedByToken: Counter
    private let issuedByRenewal: Counter

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

import MeshworkModel
import NIOConcurrencyHelpers
import Prometheus

/// `meshwork_inbound_authz_denied_total{source, target}`: refused callers, by identity. The
/// counters are created once per source (sources are services: bounded) and cached per
/// event loop, so a refusal takes no lock.
final class AuthorizationMetrics: Sendable {
    private let registry: PrometheusCollectorRegistry
    let target: String

    init(target: String, registry: PrometheusCollectorRegistry) {
        self.registry = registry
        self.target = target
    }

    func deniedCounter(source: SPIFFEID?) -> Counter {
        registry.makeCounter(
            name: "meshwork_inbound_authz_denied_total",
            labels: [("source", source?.description ?? "unauthenticated"), ("target", target)]
        )
    }
}

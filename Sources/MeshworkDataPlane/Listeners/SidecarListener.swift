import MeshworkModel
import NIOCore

/// One of the sidecar's listeners, named in the vocabulary (`inbound`, `upstream:<cluster>`,
/// `http_proxy`, `gateway:<name>`, `admin`): where it binds and how each accepted
/// connection's pipeline is built. `Sidecar` binds them all alike.
protocol SidecarListener: Sendable {
    var name: String { get }
    var address: HostPort { get }
    /// Traffic listeners drain on shutdown and, in a sidecar that expects discovery, accept
    /// only once its first state is applied. The admin listener does neither: it answers
    /// probes at once.
    var carriesTraffic: Bool { get }
    /// Its settings; their metrics count every accepted connection (`Sidecar.bind` puts
    /// the counting handler first in each pipeline).
    var settings: ProxySettings { get }
    /// Builds the rest of an accepted connection's pipeline (on its event loop).
    func initializeConnection(_ channel: any Channel) throws
}

extension SidecarListener {
    var carriesTraffic: Bool { true }
}

/// Opaque TCP to an endpoint of a cluster, picked by the connection's loop's balancer: what
/// TCP upstream and gateway listeners share.
struct ClusterTCPTarget: Sendable {
    let cluster: String
    /// mTLS checking the peer's identity, for `mesh` clusters.
    let tls: PeerTLS?
    let connectTimeout: TimeAmount

    func addProxy(to channel: any Channel, contexts: LoopContexts, metrics: ListenerMetrics) throws {
        let loopCluster = contexts.context(for: channel.eventLoop).clusters[cluster]
        try ListenerPipelines.addTCPProxy(
            to: channel,
            metrics: metrics,
            connectTimeout: connectTimeout,
            upstreamTLS: tls,
            pick: { loopCluster?.pickEndpoint() }
        )
    }
}

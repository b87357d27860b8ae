import MeshworkModel
import NIOCore

/// `upstream:<cluster>`: the app's calls to one cluster, on a port of their own: HTTP
/// (HTTP/1.1 or h2c, routed to the cluster) or TCP to an endpoint the balancer picks.
struct UpstreamListener: SidecarListener {
    let name: String
    let address: HostPort
    let listenerProtocol: ListenerProtocol
    let settings: ProxySettings
    let contexts: LoopContexts
    let target: ClusterTCPTarget
    /// A TCP listener to a mesh cluster that would go in plaintext: refused while the mesh
    /// requires mTLS.
    let plaintextMesh: Bool

    func initializeConnection(_ channel: any Channel) throws {
        switch listenerProtocol {
        case .http:
            try ListenerPipelines.addCleartextHTTP(to: channel, settings: settings, contexts: contexts)
        case .tcp:
            if plaintextMesh, contexts.context(for: channel.eventLoop).requireMTLS {
                settings.metrics.countError(.mtlsRequired)
                throw MeshError.mtlsRequired
            }
            try target.addProxy(to: channel, contexts: contexts, metrics: settings.metrics)
        }
    }
}

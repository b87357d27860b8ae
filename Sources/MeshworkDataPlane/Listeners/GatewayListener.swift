import MeshworkModel
import NIOCore

/// `gateway:<name>`: a fixed public port in front of services whose instances move: HTTP
/// or HTTPS routed per request by the loop's route table (replaced on reload), or TCP to
/// one service.
struct GatewayListener: SidecarListener {
    enum Kind: Sendable {
        case http
        case https(GatewayTLS)
        case tcp(ClusterTCPTarget)
    }

    let name: String
    let address: HostPort
    let kind: Kind
    let settings: ProxySettings
    let contexts: LoopContexts

    func initializeConnection(_ channel: any Channel) throws {
        switch kind {
        case .http:
            try ListenerPipelines.addCleartextHTTP(to: channel, settings: settings, contexts: contexts)
        case .https(let tls):
            guard let handler = tls.serverHandler() else { throw MeshTLSUnavailable() }
            try ListenerPipelines.addTLSHTTP(to: channel, tls: handler, settings: settings, contexts: contexts)
        case .tcp(let target):
            try target.addProxy(to: channel, contexts: contexts, metrics: settings.metrics)
        }
    }
}

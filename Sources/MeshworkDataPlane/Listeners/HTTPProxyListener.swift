import MeshworkModel
import NIOCore

/// `http_proxy`: the app's calls to any service by name (`Host: orders.mesh`, or an
/// absolute-form target), routed per request.
struct HTTPProxyListener: SidecarListener {
    let name = "http_proxy"
    let address: HostPort
    let settings: ProxySettings
    let contexts: LoopContexts

    func initializeConnection(_ channel: any Channel) throws {
        try ListenerPipelines.addCleartextHTTP(to: channel, settings: settings, contexts: contexts)
    }
}

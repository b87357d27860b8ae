import MeshworkModel
import NIOCore
import NIOSSL

/// `inbound`: callers to the app. Over mTLS when the sidecar has TLS (strict: without a
/// certificate yet, a connection is refused rather than served in plaintext), HTTP/1.1 or
/// HTTP/2 (ALPN, or sniffed in cleartext), or TCP authorized once per connection by the
/// caller's identity and port.
struct InboundListener: SidecarListener {
    let name = "inbound"
    let address: HostPort
    let appProtocol: AppProtocol
    let settings: ProxySettings
    let tls: MeshTLSSource?
    let contexts: LoopContexts
    let appAddress: SocketAddress?
    let connectTimeout: TimeAmount

    func initializeConnection(_ channel: any Channel) throws {
        let serverTLS = tls?.serverHandler()
        if tls != nil, serverTLS == nil {
            throw MeshTLSUnavailable()
        }
        let loopContext = contexts.context(for: channel.eventLoop)
        if serverTLS == nil, loopContext.requireMTLS {
            settings.metrics.countError(.mtlsRequired)
            throw MeshError.mtlsRequired
        }
        switch (appProtocol, serverTLS) {
        case (.tcp, let serverTLS):
            try addTCP(to: channel, serverTLS: serverTLS, loopContext: loopContext)
        case (_, .some(let serverTLS)):
            try ListenerPipelines.addTLSHTTP(
                to: channel,
                tls: serverTLS,
                settings: settings,
                contexts: contexts,
                revoked: tls?.revokedSerials ?? []
            )
        case (_, .none):
            try ListenerPipelines.addCleartextHTTP(to: channel, settings: settings, contexts: contexts)
        }
    }

    /// A TCP caller is authorized once, by identity and port, when its handshake completes
    /// (or at once when there is no TLS).
    private func addTCP(
        to channel: any Channel,
        serverTLS: NIOSSLServerHandler?,
        loopContext: LoopContext
    ) throws {
        let port = channel.localAddress?.port ?? 0
        let metrics = settings.metrics
        if let serverTLS {
            try ListenerPipelines.addServerTLS(serverTLS, to: channel, settings: settings)
            try channel.pipeline.syncOperations.addHandler(
                PeerIdentityHandler(peer: ConnectionPeer(), metrics: metrics, revoked: tls?.revokedSerials ?? []) {
                    identity,
                    _ in
                    let allowed = loopContext.inbound.authorize(source: identity, port: port, method: nil, path: nil)
                    if !allowed { metrics.countError(.unauthorized) }
                    return allowed
                }
            )
        } else if !loopContext.inbound.authorize(source: nil, port: port, method: nil, path: nil) {
            metrics.countError(.unauthorized)
            throw MeshError.unauthorized
        }
        let appAddress = self.appAddress
        try ListenerPipelines.addTCPProxy(
            to: channel,
            metrics: metrics,
            connectTimeout: connectTimeout,
            upstreamTLS: nil,
            afterHandshake: serverTLS != nil,
            pick: { appAddress }
        )
    }
}

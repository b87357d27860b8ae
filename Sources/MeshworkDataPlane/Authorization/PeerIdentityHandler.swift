import MeshworkModel
import NIOCore
import NIOSSL
import NIOTLS

/// The authenticated identity of the peer of one inbound connection: filled once, when its
/// TLS handshake completes, and read by every request (or stream) on it.
final class ConnectionPeer {
    /// The peer certificate's SPIFFE ID; nil for a plaintext connection or a certificate
    /// without exactly one.
    var identity: SPIFFEID? {
        didSet { serviceName = identity.map { $0.serviceName ?? $0.description } }
    }
    /// The service of `identity` (its full ID when it names no service), computed once per
    /// connection for per-request telemetry.
    private(set) var serviceName: String?
}

/// Sits right after the server TLS handler of the inbound listener: when the handshake
/// completes it reads the client certificate's SPIFFE ID into `peer`, before ALPN builds the
/// HTTP pipeline. With `admit` (opaque TCP inbound) it also decides the connection there:
/// a refused caller is disconnected before a byte reaches the app.
final class PeerIdentityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    let peer: ConnectionPeer
    private let metrics: ListenerMetrics
    private let admit: ((SPIFFEID?, ChannelHandlerContext) -> Bool)?
    /// Revoked certificate serials when the connection came: checked again here because a
    /// resumed TLS session skips the certificate callback.
    private let revoked: Set<String>
    private var handshakeDone = false
    /// Set when `admit` refused the caller: bytes that came with its last handshake flight
    /// are dropped here, before anything can carry them to the app.
    private var refused = false

    init(
        peer: ConnectionPeer,
        metrics: ListenerMetrics,
        revoked: Set<String> = [],
        admit: ((SPIFFEID?, ChannelHandlerContext) -> Bool)? = nil
    ) {
        self.peer = peer
        self.metrics = metrics
        self.revoked = revoked
        self.admit = admit
    }

    /// A failed handshake (plaintext, no or a foreign or expired client certificate) is
    /// counted as `tls_handshake_failed`; the TLS handler closes the connection.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !handshakeDone, error is NIOSSLError || error is BoringSSLError {
            handshakeDone = true
            metrics.countError(.tlsHandshakeFailed)
        }
        context.fireErrorCaught(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            handshakeDone = true
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
                .peerCertificate
            let facts = certificate.map(WorkloadLeaf.facts)
            if !revoked.isEmpty, let serial = facts?.serial, revoked.contains(serial) {
                metrics.countError(.tlsHandshakeFailed)
                refused = true
                context.close(promise: nil)
                return
            }
            let ids = facts?.identities ?? []
            peer.identity = ids.count == 1 ? ids[0] : nil
            if let admit, !admit(peer.identity, context) {
                refused = true
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }
}

import MeshworkModel
import NIOCore
import NIOSSL
import NIOTLS

/// The authenticated identity of the peer of one inbound connection: filled once, when its
/// TLS handshake completes, and read by every request (or stream) on it.
final class ConnectionPeer {
    /// The peer certificate's SPIFFE ID; nil for a plaintext connection or a certificate
    /// without exactly one.
    var identity: SPIFFEID?
}

/// Sits right after the server TLS handler of the inbound listener: when the handshake
/// completes it reads the client certificate's SPIFFE ID into `peer`, before ALPN builds the
/// HTTP pipeline. With `admit` (opaque TCP inbound) it also decides the connection there:
/// a refused caller is disconnected before a byte reaches the app.
final class PeerIdentityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    let peer: ConnectionPeer
    private let admit: ((SPIFFEID?, ChannelHandlerContext) -> Bool)?

    init(peer: ConnectionPeer, admit: ((SPIFFEID?, ChannelHandlerContext) -> Bool)? = nil) {
        self.peer = peer
        self.admit = admit
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
                .peerCertificate
            let ids = certificate.map(MeshTLSSource.spiffeIDs(of:)) ?? []
            peer.identity = ids.count == 1 ? ids[0] : nil
            if let admit, !admit(peer.identity, context) {
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }
}

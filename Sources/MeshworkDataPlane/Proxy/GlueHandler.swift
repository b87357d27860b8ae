import NIOCore
import NIOTLS

/// One half of an opaque TCP splice between two channels on the same event loop: bytes read
/// on one side are written to the other, and a side stops reading while its partner cannot
/// write (backpressure), so nothing is buffered beyond one read.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes read before the partner existed (at most one read: reads are held until then).
    private var early: [ByteBuffer] = []
    /// Called once when this side becomes active; the downstream side connects upstream.
    private let onActive: ((GlueHandler, any Channel) -> Void)?
    /// Behind a TLS server handler: "active" is the completed (and admitted) handshake, not
    /// the accepted connection, so a caller refused in its handshake never causes a
    /// connection upstream.
    private let activatesOnHandshake: Bool

    init(activatesOnHandshake: Bool = false, onActive: ((GlueHandler, any Channel) -> Void)? = nil) {
        self.activatesOnHandshake = activatesOnHandshake
        self.onActive = onActive
    }

    static func pair(_ a: GlueHandler, _ b: GlueHandler) {
        a.partner = b
        b.partner = a
        for buffer in a.early { b.partnerWrite(buffer) }
        for buffer in b.early { a.partnerWrite(buffer) }
        a.early.removeAll()
        b.early.removeAll()
        a.partnerFlush()
        b.partnerFlush()
        a.partnerBecameWritable()
        b.partnerBecameWritable()
    }

    private var activated = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive, !activatesOnHandshake { activate(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if !activatesOnHandshake { activate(context) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The identity check before this handler passes the event on only for admitted callers.
        if activatesOnHandshake, case TLSUserEvent.handshakeCompleted = event { activate(context) }
        context.fireUserInboundEventTriggered(event)
    }

    private func activate(_ context: ChannelHandlerContext) {
        guard !activated else { return }
        activated = true
        onActive?(self, context.channel)
    }

    // MARK: called by the partner

    private func partnerWrite(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func partnerFlush() {
        context?.flush()
    }

    private var partnerWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerBecameWritable() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    /// The partner closed: finish writing what we have, then close.
    func partnerClosed() {
        guard let context else { return }
        partner = nil
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    // MARK: channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if let partner {
            partner.partnerWrite(buffer)
        } else {
            early.append(buffer)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let partner = self.partner
        self.partner = nil
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if activatesOnHandshake, !activated {
            // The handshake needs its bytes read; what it decrypts waits in `early`.
            context.read()
        } else if let partner, partner.partnerWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }
}

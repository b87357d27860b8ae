import NIOCore
import NIOTLS

/// Closes an accepted connection whose TLS handshake has not completed within `timeout`.
/// NIOSSL waits for a ClientHello forever: without this a peer that connects and sends
/// nothing (or drips a byte now and then) holds a socket and its buffers indefinitely,
/// and a few hundred of them exhaust the listener. Sits right after the
/// `NIOSSLServerHandler`, hears its `handshakeCompleted` and leaves the pipeline then.
final class TLSHandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private let metrics: ListenerMetrics
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount, metrics: ListenerMetrics) {
        self.timeout = timeout
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let metrics = self.metrics
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            metrics.countError(.tlsHandshakeFailed)
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Passed on first: a handler that has left the pipeline forwards nothing.
        context.fireUserInboundEventTriggered(event)
        if case .handshakeCompleted = event as? TLSUserEvent {
            timer?.cancel()
            timer = nil
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }
}

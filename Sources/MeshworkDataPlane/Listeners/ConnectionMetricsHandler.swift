import NIOCore
import Prometheus
import Synchronization

/// First handler of every accepted connection: counts it and the bytes it carries, and
/// closes it at once when its listener already has `limits.maxConnections` open.
final class ConnectionMetricsHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private let metrics: ListenerMetrics
    private var active = false
    /// Whether this connection holds one of the listener's `maxConnections` places.
    private var holdsPlace = false
    /// The listener was full when this connection came: it is closed once active.
    private var overLimit = false

    init(metrics: ListenerMetrics) {
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        holdsPlace = true
        overLimit = metrics.openConnections.wrappingAdd(1, ordering: .relaxed).newValue > metrics.maxConnections
        if context.channel.isActive { opened(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        releasePlace()
    }

    private func releasePlace() {
        guard holdsPlace else { return }
        holdsPlace = false
        metrics.openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    func channelActive(context: ChannelHandlerContext) {
        opened(context: context)
        if !overLimit { context.fireChannelActive() }
    }

    private func opened(context: ChannelHandlerContext) {
        if overLimit {
            if holdsPlace, !active {
                active = true  // refused once: counted once
                metrics.countError(.connectionLimit)
                context.close(promise: nil)
            }
            return
        }
        guard !active else { return }
        active = true
        metrics.connectionsActive.increment()
        metrics.connectionsTotal.increment()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if active, !overLimit {
            active = false
            metrics.connectionsActive.decrement()
        }
        releasePlace()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if overLimit { return }
        metrics.bytesReceived.increment(by: Int64(unwrapInboundIn(data).readableBytes))
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        metrics.bytesSent.increment(by: Int64(unwrapOutboundIn(data).readableBytes))
        context.write(data, promise: promise)
    }
}

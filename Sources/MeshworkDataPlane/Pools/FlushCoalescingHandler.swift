import NIOCore

/// Coalesces flushes on a multiplexed (HTTP/2) connection: many streams flushing in the
/// same event loop tick become one flush, so one TLS record and one `writev` carry them all,
/// instead of one per request. The deferred flush runs after the loop has handled the
/// current batch of I/O events, which is microseconds away.
final class FlushCoalescingHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var flushScheduled = false

    func flush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            context.flush()
        }
    }
}

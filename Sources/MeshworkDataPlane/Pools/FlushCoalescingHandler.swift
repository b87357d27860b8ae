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
            guard self.flushScheduled else { return }
            self.flushScheduled = false
            context.flush()
        }
    }

    /// A close must not overtake a deferred flush: what was written before it (the end
    /// of the last response on a draining connection, a GOAWAY) goes out first.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if flushScheduled {
            flushScheduled = false
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}

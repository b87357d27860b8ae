import NIOCore
import NIOHTTP2

/// Graceful drain for an accepted HTTP/2 connection: on `ChannelShouldQuiesceEvent` it
/// sends GOAWAY (so the peer opens no new streams here), lets open streams finish, and
/// closes the connection once the last one has.
///
/// It counts streams as the connection's `NIOHTTP2StreamDelegate` (the inline multiplexer
/// reports stream creation and closure only there). NIO calls the delegate on the
/// connection's event loop, the same loop as the handler's own events, hence
/// `@unchecked Sendable`.
final class HTTP2DrainHandler: ChannelDuplexHandler, NIOHTTP2StreamDelegate, @unchecked Sendable {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private var context: ChannelHandlerContext?
    private var openStreams = 0
    private var draining = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
        openStreams += 1
    }

    func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
        openStreams -= 1
        if draining, openStreams <= 0 { closeSoon() }
    }

    /// Closes after the current event has finished: the stream that just closed may still
    /// be flushing its last frames, which must leave before the connection does.
    private func closeSoon() {
        guard let context else { return }
        context.eventLoop.assumeIsolated().execute {
            context.flush()
            context.close(promise: nil)
        }
    }

    /// After a connection error NIO has sent GOAWAY and ignores the peer: close, so the
    /// peer reconnects instead of waiting on a connection that no longer answers.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isFatalHTTP2ConnectionError(error) {
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !draining else { return }
        draining = true
        let goAway = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)
        )
        context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
        if openStreams <= 0 { closeSoon() }
    }
}

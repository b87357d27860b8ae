import NIOCore
import NIOHTTP2

/// Graceful drain for an accepted HTTP/2 connection: on `ChannelShouldQuiesceEvent` it
/// sends GOAWAY (so the peer opens no new streams here), lets open streams finish, and
/// closes the connection once the last one has.
final class HTTP2DrainHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private var openStreams = 0

    /// After a connection error NIO has sent GOAWAY and ignores the peer: close, so the
    /// peer reconnects instead of waiting on a connection that no longer answers.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isFatalHTTP2ConnectionError(error) {
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }
    private var draining = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is NIOHTTP2StreamCreatedEvent:
            openStreams += 1
        case is StreamClosedEvent:
            openStreams -= 1
            if draining, openStreams <= 0 { context.close(promise: nil) }
        case is ChannelShouldQuiesceEvent:
            guard !draining else { return }
            draining = true
            let goAway = HTTP2Frame(
                streamID: .rootStream,
                payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)
            )
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            if openStreams <= 0 { context.close(promise: nil) }
            return
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }
}

import NIOCore
import NIOHTTP1

/// What the downstream side of an exchange hears from the upstream side. Everything runs on
/// the one event loop that owns both channels.
protocol UpstreamDelegate: AnyObject {
    /// A response part arrived from upstream.
    func upstreamReceived(_ part: HTTPClientResponsePart)
    /// The upstream finished a batch of reads: time to flush downstream.
    func upstreamReadComplete()
    /// The upstream failed; `responseStarted` says whether any response was seen.
    func upstreamFailed(_ error: MeshError)
    /// The upstream channel's writability changed (request-body backpressure).
    func upstreamWritabilityChanged(isWritable: Bool)
    /// Whether the downstream can take more response bytes now (response-body backpressure).
    var downstreamIsWritable: Bool { get }
}

/// The upstream half of an exchange as the downstream `ProxyHandler` drives it: a pooled
/// HTTP/1.1 connection (`UpstreamHandler`) or one stream of a multiplexed HTTP/2 connection
/// (`HTTP2StreamUpstream`).
protocol Upstream: AnyObject {
    /// The endpoint this exchange goes to, for per-endpoint metrics.
    var endpoint: EndpointMetrics? { get }
    /// The endpoint's index in its cluster when the balancer counted this exchange;
    /// nil once its latency has been reported (or for exchanges it does not track).
    var endpointIndex: Int? { get set }
    var isActive: Bool { get }
    /// Whether more request bytes may be written now (request-body backpressure).
    var isWritable: Bool { get }
    /// Starts an exchange for `delegate`.
    func begin(delegate: any UpstreamDelegate)
    func write(_ part: HTTPClientRequestPart)
    func flush()
    func close()
    /// The downstream can take response bytes again.
    func resumeReading()
    /// The downstream is done with this exchange, whether or not it completed.
    func finish()
    /// Turns an HTTP/1.1 connection into a byte tunnel after `101 Switching Protocols`.
    func becomeTunnel(glue: GlueHandler) throws
}

/// The last handler of an upstream pipeline: a pooled HTTP/1.1 connection or one HTTP/2
/// stream, both speaking `HTTPClientRequestPart`/`HTTPClientResponsePart`. It is the
/// upstream half of the glue between two channels: the downstream `ProxyHandler` writes
/// request parts through it, and it hands response parts back.
final class UpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler, Upstream {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// Called when an exchange finished cleanly and the connection can serve another.
    typealias Release = (UpstreamHandler) -> Void

    private var context: ChannelHandlerContext?
    private(set) weak var delegate: (any UpstreamDelegate)?
    private var pendingRead = false
    private var requestEnded = false
    private var responseEnded = false
    private var responseKeepAlive = true
    /// What the upstream channel is, which decides what happens when an exchange ends.
    enum Kind {
        /// A keep-alive HTTP/1.1 connection from a pool: given back when clean.
        case pooled
        /// One HTTP/2 stream: closes by itself when both directions ended.
        case stream
        /// A connection of its own (an `Upgrade` request): closed at the end, or turned
        /// into a byte tunnel on `101 Switching Protocols`.
        case dedicated
    }

    private let kind: Kind
    var release: Release?
    /// The endpoint this connection goes to, for per-endpoint metrics.
    let endpoint: EndpointMetrics?
    /// The endpoint's index in its cluster when the balancer counted this exchange;
    /// nil once its latency has been reported (or for exchanges it does not track).
    var endpointIndex: Int?

    init(kind: Kind, endpoint: EndpointMetrics?) {
        self.kind = kind
        self.endpoint = endpoint
    }

    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Starts an exchange for `delegate` on this connection.
    func begin(delegate: any UpstreamDelegate) {
        self.delegate = delegate
        requestEnded = false
        responseEnded = false
        responseKeepAlive = true
    }

    func write(_ part: HTTPClientRequestPart) {
        if case .end = part { requestEnded = true }
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func close() {
        context?.close(promise: nil)
    }

    func resumeReading() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    /// The downstream is done with this exchange, whether or not it completed. A connection
    /// is reused only when both directions ended cleanly and the upstream allows keep-alive.
    func finish() {
        let complete = requestEnded && responseEnded
        delegate = nil
        if kind == .stream, complete {
            // An HTTP/2 stream that ended both ways closes by itself; closing it here
            // would send RST_STREAM, which peers count as abuse.
            return
        }
        if kind == .pooled, complete, responseKeepAlive, let release, isActive {
            resumeReading()
            release(self)
        } else if let context {
            context.close(promise: nil)
        }
    }

    /// Turns this HTTP/1.1 connection into a raw byte tunnel after `101 Switching
    /// Protocols`: the HTTP codec leaves (bytes it already read past the response head go
    /// to `glue`), and `glue` carries everything from now on.
    func becomeTunnel(glue: GlueHandler) throws {
        guard let context else { throw ChannelError.ioOnClosedChannel }
        let pipeline = context.pipeline.syncOperations
        delegate = nil
        try pipeline.addHandler(glue)
        let decoder = try pipeline.context(handlerType: ByteToMessageHandler<HTTPResponseDecoder>.self)
        let encoder = try pipeline.context(handlerType: HTTPRequestEncoder.self)
        pipeline.removeHandler(context: context, promise: nil)
        pipeline.removeHandler(context: decoder, promise: nil)
        pipeline.removeHandler(context: encoder, promise: nil)
    }

    // MARK: inbound events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            if head.status.code >= 200 || head.status.code == 101 {
                responseKeepAlive = head.isKeepAlive
            }
        case .body:
            break
        case .end:
            responseEnded = true
        }
        guard let delegate else {
            // No exchange: an unsolicited response. The connection is not trustworthy.
            context.close(promise: nil)
            return
        }
        delegate.upstreamReceived(part)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let delegate, !responseEnded {
            self.delegate = nil
            delegate.upstreamFailed(.upstreamReset)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let delegate, !responseEnded {
            self.delegate = nil
            delegate.upstreamFailed(error is HTTPParserError ? .protocolError : .upstreamReset)
        }
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    // MARK: outbound events

    func read(context: ChannelHandlerContext) {
        if let delegate, !delegate.downstreamIsWritable {
            pendingRead = true
        } else {
            context.read()
        }
    }
}

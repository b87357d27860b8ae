import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// The streams of one accepted HTTP/2 connection, each an exchange of a `ProxyHandler`
/// driven directly, without a child channel, codec and pipeline per stream (the server-side
/// twin of `HTTP2ClientStreams`; see there for flow control). It also drains the
/// connection: on `ChannelShouldQuiesceEvent` it sends GOAWAY, lets open streams finish and
/// closes once the last one has. And it bounds the connection's life without streams: the
/// first HEADERS must come within `headerReadTimeout` of the connection, and a connection
/// with no open stream for `idleTimeout` is closed (GOAWAY first); a peer that sends
/// nothing for `keepAliveInterval` is PINGed, and closed if it still sends nothing (not
/// even the PING's ACK) within `keepAliveAckTimeout`. Written here rather than with
/// `NIOHTTP2ServerConnectionManagementHandler` because this handler already counts the
/// streams and drains, and the pipeline is built after the channel is active, when that
/// handler's timers would never start.
final class HTTP2ServerStreams: HTTP2FrameConnection, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let settings: ProxySettings
    private let loopContext: LoopContext
    private let peer: ConnectionPeer?
    let streamWindow: Int
    private(set) var context: ChannelHandlerContext?
    var streams: [HTTP2StreamID: HTTP2ServerStream] = [:]
    var batch = HTTP2ReadBatch<HTTP2ServerStream>()
    private var draining = false
    private(set) var localAddress: SocketAddress?
    private(set) var remoteAddress: SocketAddress?
    /// The first-HEADERS deadline, then the idle timer. Scheduled at most once per idle
    /// period, not per request: a stream that opens only clears `idleSince`, and the timer,
    /// when it fires, closes the connection or re-arms for what is left (a schedule and a
    /// cancel per request cost the sidecar pair ~10% CPU per request).
    private var idleTimer: Scheduled<Void>?
    /// Since when the connection has had no open stream (nil while one is open).
    private var idleSince: NIODeadline? = .now()
    private var openedAny = false
    private var keepAliveTimer: Scheduled<Void>?
    /// Whether any frame arrived since the keepalive timer last looked.
    private var readSinceKeepAliveCheck = false
    private var pingOutstanding = false
    private var highestStreamID = HTTP2StreamID(0)
    /// How long a peer has to answer a keepalive PING.
    static let keepAliveAckTimeout = TimeAmount.seconds(20)

    init(settings: ProxySettings, loop: LoopContext, peer: ConnectionPeer?, streamWindow: Int) {
        self.settings = settings
        self.loopContext = loop
        self.peer = peer
        self.streamWindow = streamWindow
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        localAddress = context.channel.localAddress
        remoteAddress = context.channel.remoteAddress
        idleSince = .now()
        armIdleTimer(at: .now() + settings.headerReadTimeout, context: context)
        armKeepAlive(after: settings.keepAliveInterval, context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimers()
        self.context = nil
    }

    private func cancelTimers() {
        idleTimer?.cancel()
        idleTimer = nil
        keepAliveTimer?.cancel()
        keepAliveTimer = nil
    }

    // MARK: connection timers

    private func armIdleTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.idleTimerFired()
        }
    }

    private func idleTimerFired() {
        idleTimer = nil
        // Busy now: the next time the streams run out arms it again.
        guard let context, let idleSince, streams.isEmpty, !draining else { return }
        let limit = openedAny ? settings.idleTimeout : settings.headerReadTimeout
        if NIODeadline.now() - idleSince >= limit {
            goAwayAndClose(context: context)
        } else {
            armIdleTimer(at: idleSince + limit, context: context)
        }
    }

    private func armKeepAlive(after interval: TimeAmount, context: ChannelHandlerContext) {
        keepAliveTimer = context.eventLoop.assumeIsolated().scheduleTask(in: interval) { [weak self] in
            self?.checkKeepAlive()
        }
    }

    private func checkKeepAlive() {
        guard let context else { return }
        if readSinceKeepAliveCheck {
            readSinceKeepAliveCheck = false
            pingOutstanding = false
            armKeepAlive(after: settings.keepAliveInterval, context: context)
        } else if pingOutstanding {
            // Nothing at all, not even the ACK: the peer is gone or stuck.
            settings.metrics.countError(.keepAliveTimeout)
            goAwayAndClose(context: context)
        } else {
            pingOutstanding = true
            writeControl(
                HTTP2Frame(streamID: .rootStream, payload: .ping(HTTP2PingData(withInteger: 0x6d65_7368), ack: false))
            )
            context.flush()
            armKeepAlive(after: min(Self.keepAliveAckTimeout, settings.keepAliveInterval), context: context)
        }
    }

    /// GOAWAY naming the last stream processed, then close (after the frame is flushed).
    private func goAwayAndClose(context: ChannelHandlerContext) {
        cancelTimers()
        let goAway = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: highestStreamID, errorCode: .noError, opaqueData: nil)
        )
        context.writeAndFlush(wrapOutboundOut(goAway)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func noStreamsLeft() {
        guard streams.isEmpty, !draining, idleSince == nil, let context else { return }
        let now = NIODeadline.now()
        idleSince = now
        if idleTimer == nil { armIdleTimer(at: now + settings.idleTimeout, context: context) }
    }

    /// We reset a stream: it is over now, whatever NIO reports later.
    func forget(_ stream: HTTP2ServerStream) {
        if streams[stream.id] === stream { streams[stream.id] = nil }
        closeIfDrained()
        noStreamsLeft()
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        frameArrived()
        readSinceKeepAliveCheck = true
        let frame = unwrapInboundIn(data)
        guard frame.streamID != .rootStream else { return }
        if let stream = streams[frame.streamID] {
            stream.received(frame.payload)
        } else if case .headers = frame.payload {
            // NIO's state machine has checked that this is a new stream the peer may open.
            idleSince = nil
            openedAny = true
            highestStreamID = max(highestStreamID, frame.streamID)
            let stream = HTTP2ServerStream(id: frame.streamID, connection: self)
            stream.proxy = ProxyHandler(settings: settings, loop: loopContext, stream: stream, peer: peer)
            streams[frame.streamID] = stream
            stream.received(frame.payload)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readBatchCompleted(context: context)
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !streamEventTriggered(event), event is ChannelShouldQuiesceEvent {
            // Drain: no new streams (GOAWAY), close once the open ones have ended.
            guard !draining else { return }
            draining = true
            let goAway = HTTP2Frame(
                streamID: .rootStream,
                payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)
            )
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            closeIfDrained()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func streamRemoved() {
        closeIfDrained()
        noStreamsLeft()
    }

    /// Closes after the current event: the stream that just ended may still be flushing its
    /// last frames, which must leave before the connection does.
    private func closeIfDrained() {
        guard draining, streams.isEmpty, let context else { return }
        context.eventLoop.assumeIsolated().execute {
            context.flush()
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        for stream in streams.values { stream.proxy?.streamWritabilityChanged() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isFatalHTTP2ConnectionError(error) {
            // NIO has sent GOAWAY and ignores the peer: close, so it reconnects.
            context.close(promise: nil)
        } else if let error = error as? NIOHTTP2Errors.StreamError {
            streamErrorCaught(error, context: context)
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeAllStreams()
        context.fireChannelInactive()
    }
}

/// One stream of an `HTTP2ServerStreams` connection: request frames go to its
/// `ProxyHandler` as request parts, and the handler's response parts become frames.
final class HTTP2ServerStream: HTTP2FrameStream {
    let id: HTTP2StreamID
    private let connection: HTTP2ServerStreams
    /// Released when the stream closes (the handler keeps the stream, not the reverse).
    var proxy: ProxyHandler?

    private var requestHeadSeen = false
    /// The peer ended its side: no more WINDOW_UPDATEs for this stream (NIO refuses one
    /// for a stream half-closed by the peer, failing the write with a stream error).
    private var requestEnded = false
    private var held: HTTP2Frame.FramePayload?
    private var responseEnded = false
    private var done = false
    private var isTouched = false
    private var inboundWindow: Int?
    private var unsentBytes = 0
    private var outboundBlocked = false

    init(id: HTTP2StreamID, connection: HTTP2ServerStreams) {
        self.id = id
        self.connection = connection
    }

    var isWritable: Bool { !done && !outboundBlocked && connection.channelIsWritable }
    var localAddress: SocketAddress? { connection.localAddress }
    var remoteAddress: SocketAddress? { connection.remoteAddress }

    // MARK: request

    func received(_ payload: HTTP2Frame.FramePayload) {
        guard let proxy else { return }
        switch payload {
        case .headers(let headers):
            if requestHeadSeen {
                requestEnded = true
                proxy.streamReceived(.end(HTTP2StreamUpstream.regularHeaders(headers.headers)))
            } else {
                guard let head = Self.requestHead(headers.headers, endStream: headers.endStream) else {
                    reset(.protocolError)
                    return
                }
                requestHeadSeen = true
                proxy.streamReceived(.head(head))
                if headers.endStream {
                    requestEnded = true
                    self.proxy?.streamReceived(.end(nil))
                }
            }
        case .data(let data):
            guard case .byteBuffer(let buffer) = data.data else { return }
            if buffer.readableBytes > 0 { proxy.streamReceived(.body(buffer)) }
            if data.endStream {
                requestEnded = true
                self.proxy?.streamReceived(.end(nil))
            }
        default:
            // RST_STREAM: the StreamClosedEvent that follows ends the exchange.
            return
        }
        if !isTouched {
            isTouched = true
            connection.touch(self)
        }
    }

    func readComplete() {
        isTouched = false
        proxy?.streamReadComplete()
    }

    /// NIO reports the window after request bytes arrived: it is topped up if the exchange
    /// reads on (it calls `read()`), and held while it does not.
    func inboundWindowChanged(_ window: Int) {
        inboundWindow = window
        proxy?.streamWantsRead()
    }

    func read() {
        guard !done, !requestEnded, let window = inboundWindow,
            let increment = HTTP2Windows.increment(window: window, target: connection.streamWindow)
        else { return }
        inboundWindow = window + increment
        connection.writeControl(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: increment)))
    }

    // MARK: response

    func write(_ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>?) {
        guard !done, !responseEnded else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch part {
        case .head(let head):
            let block = HTTP2Frame.FramePayload.headers(.init(headers: Self.responseHeaders(head)))
            if head.status.code < 200 {
                // Interim answers (100 Continue) go out as they are.
                emitHeld()
                emit(block, promise: promise)
            } else {
                emitHeld()
                held = block
                promise?.succeed()
            }
        case .body(.byteBuffer(let buffer)):
            emitHeld()
            held = .data(.init(data: .byteBuffer(buffer)))
            promise?.succeed()
        case .body(let data):
            emitHeld()
            held = .data(.init(data: data))
            promise?.succeed()
        case .end(let trailers):
            responseEnded = true
            if let trailers, !trailers.isEmpty {
                emitHeld()
                emit(
                    .headers(.init(headers: HTTP2StreamUpstream.trailerHeaders(trailers), endStream: true)),
                    promise: promise
                )
            } else {
                switch held {
                case .headers(var headers):
                    headers.endStream = true
                    held = nil
                    emit(.headers(headers), promise: promise)
                case .data(var data):
                    data.endStream = true
                    held = nil
                    emit(.data(data), promise: promise)
                default:
                    emit(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)), promise: promise)
                }
            }
        }
    }

    func flush() {
        if !done { emitHeld() }
        // Also once done: a frame with END_STREAM on a stream whose request has ended
        // closes it inside the write (NIO fires `StreamClosedEvent` synchronously for a
        // HEADERS frame), so the answer of a bodiless response or trailers is written
        // but still waits for this flush.
        connection.flush()
    }

    private func emitHeld() {
        if let frame = held {
            held = nil
            emit(frame, promise: nil)
        }
    }

    private func emit(_ payload: HTTP2Frame.FramePayload, promise: EventLoopPromise<Void>?) {
        guard case .data(let data) = payload, data.data.readableBytes > 0 else {
            connection.write(HTTP2Frame(streamID: id, payload: payload), promise: promise)
            return
        }
        // Response bytes count as unsent until NIO has written them (they may wait for the
        // peer's window): that is this stream's writability towards the upstream.
        let size = data.data.readableBytes
        unsentBytes += size
        if unsentBytes >= HTTP2Windows.highWatermark { outboundBlocked = true }
        let sent = promise ?? connection.makePromise()
        sent?.futureResult.assumeIsolated().whenComplete { _ in self.sent(size) }
        connection.write(HTTP2Frame(streamID: id, payload: payload), promise: sent)
    }

    private func sent(_ size: Int) {
        unsentBytes -= size
        if outboundBlocked, unsentBytes < HTTP2Windows.lowWatermark {
            outboundBlocked = false
            if !done { proxy?.streamWritabilityChanged() }
        }
    }

    // MARK: end

    /// The exchange gives up on the stream (a failure mid-response): reset it.
    func close() {
        reset(.cancel)
    }

    private func reset(_ code: HTTP2ErrorCode) {
        guard !done else { return }
        held = nil
        connection.writeControl(HTTP2Frame(streamID: id, payload: .rstStream(code)))
        connection.forget(self)
        closed(reset: code)
    }

    /// NIO closed the stream, or we reset it, or the connection went away.
    func closed(reset: HTTP2ErrorCode?) {
        guard !done else { return }
        done = true
        let proxy = self.proxy
        self.proxy = nil
        proxy?.streamClosed()
    }
}

extension HTTP2ServerStream {
    /// The request head of a header block, as NIO's HTTP/2-to-HTTP/1 codec makes it:
    /// `:authority` becomes `Host` (when there is none), and a request with a body but no
    /// `content-length` is marked chunked (or `content-length: 0` when the block ended the
    /// stream). Nil when a required pseudo-header is missing or repeated.
    static func requestHead(_ block: HPACKHeaders, endStream: Bool) -> HTTPRequestHead? {
        var method: String?
        var path: String?
        var authority: String?
        var scheme = false
        var headers = HTTPHeaders()
        headers.reserveCapacity(block.count + 1)
        var hasHost = false
        var hasContentLength = false
        for (name, value, _) in block {
            guard name.utf8.first == UInt8(ascii: ":") else {
                if name.utf8.count == 4, name == "host" { hasHost = true }
                if name.utf8.count == 14, name == "content-length" { hasContentLength = true }
                headers.add(name: name, value: value)
                continue
            }
            switch name {
            case ":method":
                guard method == nil else { return nil }
                method = value
            case ":path":
                guard path == nil else { return nil }
                path = value
            case ":authority":
                guard authority == nil else { return nil }
                authority = value
            case ":scheme":
                guard !scheme else { return nil }
                scheme = true
            default:
                return nil
            }
        }
        guard let method, let path, scheme, !path.isEmpty else { return nil }
        let httpMethod = HTTPMethod(rawValue: method)
        if !hasHost, let authority { headers.add(name: "host", value: authority) }
        switch httpMethod {
        case .GET, .HEAD, .DELETE, .CONNECT, .TRACE:
            break
        default:
            if !hasContentLength {
                headers.add(
                    name: endStream ? "content-length" : "transfer-encoding",
                    value: endStream ? "0" : "chunked"
                )
            }
        }
        return HTTPRequestHead(version: .http2, method: httpMethod, uri: path, headers: headers)
    }

    /// The response's header block: `:status`, then the fields with lowercased names,
    /// without the connection-specific ones.
    static func responseHeaders(_ head: HTTPResponseHead) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.headers.count + 1)
        let code = Int(head.status.code)
        headers.add(name: ":status", value: code < statusStrings.count ? statusStrings[code] : String(code))
        for (name, value) in head.headers {
            let name = HTTP2StreamUpstream.lowercased(name)
            if HTTP2StreamUpstream.isConnectionSpecific(name, value: value) { continue }
            headers.add(name: name, value: value)
        }
        return headers
    }

    /// `:status` values, formatted once.
    static let statusStrings: [String] = (0..<600).map { String($0) }
}

import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// The streams of one HTTP/2 client connection, carried without a child channel each. It
/// sits right after `NIOHTTP2Handler` (framing, HPACK, stream states, flow-control
/// accounting, the concurrent-streams limit) and maps stream IDs to exchanges, converting
/// between HTTP/1-style parts and frames itself. A child `HTTP2StreamChannel` per request
/// (its own pipeline, codec and handlers, built and torn down for every request) was the
/// largest single cost of the sidecar-to-sidecar hop.
///
/// Flow control, which the child channels did before: the connection window and each
/// stream's window are topped up (WINDOW_UPDATE) once half used, as NIO's stream channels
/// do; a stream's window is held while the downstream that takes its response is not
/// writable, so a slow reader stops its sender after one window. Request bodies count as
/// unsent until NIO has written them; a stream above `HTTP2Windows.highWatermark` unsent
/// bytes is not writable, which stops the downstream reading more.
final class HTTP2ClientStreams: HTTP2FrameConnection, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    let scheme: String
    /// The stream window this connection's SETTINGS announce (the target for top-ups).
    let streamWindow: Int
    private(set) var context: ChannelHandlerContext?
    var streams: [HTTP2StreamID: HTTP2StreamUpstream] = [:]
    var batch = HTTP2ReadBatch<HTTP2StreamUpstream>()
    private var nextStreamID = HTTP2StreamID(1)

    /// The peer sent GOAWAY: no new streams.
    var onGoAway: (() -> Void)?
    /// NIO hit a connection error and has sent GOAWAY itself.
    var onConnectionError: (() -> Void)?
    /// A stream of this connection ended (each opened stream once).
    var onStreamClosed: (() -> Void)?
    /// The connection is active and NIO has written its preface: streams may start.
    /// (The connect future completes before the pipeline hears `channelActive`.)
    var onActive: (() -> Void)?

    init(scheme: String, streamWindow: Int) {
        self.scheme = scheme
        self.streamWindow = streamWindow
    }

    var isActive: Bool { context?.channel.isActive ?? false }
    var channel: (any Channel)? { context?.channel }
    /// The connection's loop, kept after the handler left the pipeline.
    private(set) var eventLoop: (any EventLoop)?

    /// A new exchange on this connection; its stream ID is taken when its HEADERS are
    /// written, so IDs always go out in increasing order.
    func makeStream(endpoint: EndpointMetrics?) -> HTTP2StreamUpstream {
        HTTP2StreamUpstream(connection: self, endpoint: endpoint)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        eventLoop = context.eventLoop
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        let active = onActive
        onActive = nil
        active?()
    }

    // MARK: called by streams

    func open(_ stream: HTTP2StreamUpstream) -> HTTP2StreamID {
        let id = nextStreamID
        nextStreamID = HTTP2StreamID(Int32(id) + 2)
        streams[id] = stream
        return id
    }

    /// A stream ended on our side (reset, or never opened): forget it now.
    func forget(_ stream: HTTP2StreamUpstream) {
        if let id = stream.id, streams[id] === stream { streams[id] = nil }
        onStreamClosed?()
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        frameArrived()
        let frame = unwrapInboundIn(data)
        if frame.streamID == .rootStream {
            if case .goAway = frame.payload { onGoAway?() }
            return
        }
        guard let stream = streams[frame.streamID] else { return }
        stream.received(frame.payload)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readBatchCompleted(context: context)
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        _ = streamEventTriggered(event)
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        for stream in streams.values { stream.connectionWritabilityChanged(writable) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isFatalHTTP2ConnectionError(error) {
            onConnectionError?()
            closeAllStreams()
            context.close(promise: nil)
        } else if let error = error as? NIOHTTP2Errors.StreamError {
            // A frame of ours NIO refused (written after GOAWAY, say) ends that stream.
            streamErrorCaught(error, context: context)
        }
        context.fireErrorCaught(error)
    }

    /// (Each stream reports its own end through `onStreamClosed`.)
    func streamRemoved() {}

    func channelInactive(context: ChannelHandlerContext) {
        closeAllStreams()
        context.fireChannelInactive()
    }
}

/// One exchange on an `HTTP2ClientStreams` connection, as `ProxyHandler` drives any
/// upstream: request parts become HEADERS/DATA frames (the last one carries END_STREAM, so a
/// GET is a single HEADERS frame), response frames become response parts.
final class HTTP2StreamUpstream: Upstream, HTTP2FrameStream {
    private let connection: HTTP2ClientStreams
    let endpoint: EndpointMetrics?
    var endpointIndex: Int?
    private(set) var id: HTTP2StreamID?
    private weak var delegate: (any UpstreamDelegate)?

    /// The last request frame, held so END_STREAM can be set on it.
    private var held: HTTP2Frame.FramePayload?
    private var requestIsHead = false
    private var requestEnded = false
    private var responseHeadSeen = false
    private var responseEnded = false
    /// Closed by NIO, reset by us, or never opened and finished.
    private var done = false
    private var isTouched = false

    /// The stream's inbound window as NIO last reported it; topped up unless paused.
    private var inboundWindow: Int?
    /// The downstream was not writable when response bytes were handed to it.
    private var paused = false
    /// Request body bytes written but not yet sent by NIO.
    private var unsentBytes = 0
    /// Set when `unsentBytes` reached the high watermark; cleared (and the downstream
    /// told) once it falls below the low one.
    private var outboundBlocked = false

    init(connection: HTTP2ClientStreams, endpoint: EndpointMetrics?) {
        self.connection = connection
        self.endpoint = endpoint
    }

    var isActive: Bool { !done && connection.isActive }
    var isWritable: Bool { !done && !outboundBlocked && connection.channelIsWritable }

    func begin(delegate: any UpstreamDelegate) {
        self.delegate = delegate
    }

    // MARK: request

    func write(_ part: HTTPClientRequestPart) {
        guard !done, !requestEnded else { return }
        switch part {
        case .head(let head):
            requestIsHead = head.method == .HEAD
            held = .headers(.init(headers: Self.requestHeaders(head, scheme: connection.scheme)))
        case .body(.byteBuffer(let buffer)):
            emitHeld()
            held = .data(.init(data: .byteBuffer(buffer)))
        case .body(let data):
            emitHeld()
            held = .data(.init(data: data))
        case .end(let trailers):
            requestEnded = true
            if let trailers, !trailers.isEmpty {
                emitHeld()
                emit(.headers(.init(headers: Self.trailerHeaders(trailers), endStream: true)))
            } else {
                switch held {
                case .headers(var headers):
                    headers.endStream = true
                    held = nil
                    emit(.headers(headers))
                case .data(var data):
                    data.endStream = true
                    held = nil
                    emit(.data(data))
                default:
                    emit(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))
                }
            }
        }
    }

    func flush() {
        if !done { emitHeld() }
        // Also once done: NIO may close the stream inside the write of its last frame.
        connection.flush()
    }

    private func emitHeld() {
        if let frame = held {
            held = nil
            emit(frame)
        }
    }

    private func emit(_ payload: HTTP2Frame.FramePayload) {
        guard id != nil || connection.isActive else {
            // The connection died before this stream's first frame: fail on the next tick
            // (not inside the write), as a reset, so the exchange may be retried elsewhere.
            done = true
            held = nil
            connection.forget(self)
            connection.eventLoop?.assumeIsolated().execute { self.fail(.upstreamReset) }
            return
        }
        let id = self.id ?? connection.open(self)
        self.id = id
        guard case .data(let data) = payload, data.data.readableBytes > 0 else {
            connection.write(HTTP2Frame(streamID: id, payload: payload))
            return
        }
        // Body bytes count as unsent until NIO has written them (they may wait for the
        // peer's window): that is this stream's writability.
        let size = data.data.readableBytes
        unsentBytes += size
        if unsentBytes >= HTTP2Windows.highWatermark { outboundBlocked = true }
        let promise = connection.makePromise()
        promise?.futureResult.assumeIsolated().whenComplete { _ in self.sent(size) }
        connection.write(HTTP2Frame(streamID: id, payload: payload), promise: promise)
    }

    private func sent(_ size: Int) {
        unsentBytes -= size
        if outboundBlocked, unsentBytes < HTTP2Windows.lowWatermark {
            outboundBlocked = false
            if !done { delegate?.upstreamWritabilityChanged(isWritable: isWritable) }
        }
    }

    func connectionWritabilityChanged(_ writable: Bool) {
        delegate?.upstreamWritabilityChanged(isWritable: writable && isWritable)
    }

    // MARK: response

    func received(_ payload: HTTP2Frame.FramePayload) {
        guard let delegate else { return }
        switch payload {
        case .headers(let headers):
            if responseHeadSeen {
                responseEnded = true
                delegate.upstreamReceived(.end(Self.regularHeaders(headers.headers)))
            } else {
                guard
                    let head = Self.responseHead(
                        headers.headers,
                        requestIsHead: requestIsHead,
                        endStream: headers.endStream
                    )
                else {
                    reset(.protocolError)
                    fail(.protocolError)
                    return
                }
                if head.status.code >= 200 || head.status == .switchingProtocols { responseHeadSeen = true }
                delegate.upstreamReceived(.head(head))
                if headers.endStream, responseHeadSeen {
                    responseEnded = true
                    delegate.upstreamReceived(.end(nil))
                }
            }
        case .data(let data):
            guard case .byteBuffer(let buffer) = data.data else { return }
            if buffer.readableBytes > 0 {
                if !delegate.downstreamIsWritable { paused = true }
                delegate.upstreamReceived(.body(buffer))
            }
            if data.endStream {
                responseEnded = true
                self.delegate?.upstreamReceived(.end(nil))
            }
        case .rstStream:
            // The StreamClosedEvent that follows ends the exchange.
            return
        default:
            return
        }
        if !isTouched {
            isTouched = true
            connection.touch(self)
        }
    }

    func readComplete() {
        isTouched = false
        delegate?.upstreamReadComplete()
    }

    func inboundWindowChanged(_ window: Int) {
        inboundWindow = window
        if !paused { topUpWindow() }
    }

    private func topUpWindow() {
        // (Not after the response ended: NIO refuses a WINDOW_UPDATE for a stream the peer
        // has half-closed, failing the write with a stream error.)
        guard !done, !responseEnded, let id, let window = inboundWindow,
            let increment = HTTP2Windows.increment(window: window, target: connection.streamWindow)
        else { return }
        inboundWindow = window + increment
        connection.writeControl(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: increment)))
    }

    func resumeReading() {
        guard paused else { return }
        paused = false
        topUpWindow()
    }

    // MARK: end

    /// NIO closed the stream (both sides ended, or a reset either way, or the connection
    /// went away): an exchange still waiting for its response fails.
    func closed(reset: HTTP2ErrorCode?) {
        guard !done else { return }
        done = true
        connection.onStreamClosed?()
        if !responseEnded { fail(.upstreamReset) }
    }

    private func fail(_ error: MeshError) {
        guard let delegate else { return }
        self.delegate = nil
        delegate.upstreamFailed(error)
    }

    func finish() {
        delegate = nil
        guard !done else { return }
        if id == nil {
            // Never sent a frame: nothing to tell the peer.
            done = true
            held = nil
            connection.forget(self)
        } else if !(requestEnded && responseEnded) {
            // Resetting a stream that ended both ways would be counted as abuse by peers;
            // one that did not must be reset so the peer stops.
            reset(.cancel)
        }
    }

    func close() {
        delegate = nil
        if !done {
            if id == nil {
                done = true
                connection.forget(self)
            } else {
                reset(.cancel)
            }
        }
    }

    private func reset(_ code: HTTP2ErrorCode) {
        guard !done, let id else { return }
        done = true
        held = nil
        connection.forget(self)
        connection.writeControl(HTTP2Frame(streamID: id, payload: .rstStream(code)))
    }

    func becomeTunnel(glue: GlueHandler) throws {
        throw ChannelError.operationUnsupported
    }
}

extension HTTP2StreamUpstream {
    /// The request's header block: pseudo-headers, then the fields with lowercased names,
    /// without the connection-specific ones HTTP/2 forbids (RFC 9113 section 8.2.2; an
    /// HTTP/1 cluster's head may carry `transfer-encoding: chunked`); `Host` becomes
    /// `:authority`.
    static func requestHeaders(_ head: HTTPRequestHead, scheme: String) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.headers.count + 3)
        headers.add(name: ":method", value: head.method.rawValue)
        headers.add(name: ":scheme", value: scheme)
        headers.add(name: ":authority", value: head.headers.first(name: "host") ?? "")
        headers.add(name: ":path", value: head.uri)
        for (name, value) in head.headers {
            let name = lowercased(name)
            if isConnectionSpecific(name, value: value) { continue }
            headers.add(name: name, value: value)
        }
        return headers
    }

    /// `host` (sent as `:authority`) and the fields HTTP/2 does not carry; `te` only as
    /// `trailers`. Names are lowercase here; most fields are told apart by length alone.
    static func isConnectionSpecific(_ name: String, value: String) -> Bool {
        switch name.utf8.count {
        case 2: return name == "te" && value.lowercased() != "trailers"
        case 4: return name == "host"
        case 7: return name == "upgrade"
        case 10: return name == "connection" || name == "keep-alive"
        case 16: return name == "proxy-connection"
        case 17: return name == "transfer-encoding"
        default: return false
        }
    }

    static func trailerHeaders(_ trailers: HTTPHeaders) -> HPACKHeaders {
        var headers = HPACKHeaders()
        headers.reserveCapacity(trailers.count)
        for (name, value) in trailers { headers.add(name: lowercased(name), value: value) }
        return headers
    }

    /// The name as HTTP/2 requires it; no new string when it already is lowercase.
    static func lowercased(_ name: String) -> String {
        name.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) ? name.lowercased() : name
    }

    /// The response head of a header block, or nil when its `:status` is missing or not
    /// three digits. Like NIO's HTTP/2-to-HTTP/1 codec, a final response that has a body
    /// but no `content-length` is marked chunked (or `content-length: 0` when the block
    /// ended the stream) so the HTTP/1 side frames it.
    static func responseHead(_ block: HPACKHeaders, requestIsHead: Bool, endStream: Bool) -> HTTPResponseHead? {
        var status: Int?
        var headers = HTTPHeaders()
        headers.reserveCapacity(block.count)
        var hasContentLength = false
        for (name, value, _) in block {
            if name.utf8.first == UInt8(ascii: ":") {
                guard name == ":status", status == nil, value.utf8.count == 3, let code = Int(value), code >= 100
                else { return nil }
                status = code
                continue
            }
            if !hasContentLength, name == "content-length" { hasContentLength = true }
            headers.add(name: name, value: value)
        }
        guard let status else { return nil }
        if status >= 200, status != 204, status != 304, !requestIsHead, !hasContentLength {
            headers.add(name: endStream ? "content-length" : "transfer-encoding", value: endStream ? "0" : "chunked")
        }
        return HTTPResponseHead(version: .http2, status: HTTPResponseStatus(statusCode: status), headers: headers)
    }

    static func regularHeaders(_ block: HPACKHeaders) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(block.count)
        for (name, value, _) in block where name.utf8.first != UInt8(ascii: ":") {
            headers.add(name: name, value: value)
        }
        return headers
    }
}

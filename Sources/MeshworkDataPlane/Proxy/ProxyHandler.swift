import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOHTTP1
import Prometheus

/// Settings of a proxying listener that every connection's `ProxyHandler` shares.
struct ProxySettings: Sendable {
    var route: ProxyRoute
    var metrics: ListenerMetrics
    /// Time a client has to send a whole request head (HTTP/1.1 connections only).
    var headerReadTimeout: TimeAmount
    /// Time a client has to complete its TLS handshake (TLS listeners only).
    var tlsHandshakeTimeout: TimeAmount = .seconds(10)
    /// A connection with no request in flight is closed after this long.
    var idleTimeout: TimeAmount
    /// An HTTP/2 peer that sent nothing for this long is PINGed (and closed if it stays
    /// silent).
    var keepAliveInterval: TimeAmount = .seconds(120)
    var maxHeaderBytes: Int
    /// Inbound listeners restore the HTTP version the calling app used, honour the caller's
    /// deadline, and protect the app (rate and concurrency limits).
    var restoresProtocol: Bool
}

/// The downstream half of an HTTP exchange: receives a request from a client (an HTTP/1.1
/// connection or one HTTP/2 stream), picks the cluster and an upstream connection, streams
/// the request there and the response back, with backpressure both ways and without
/// buffering bodies. Every error the proxy makes itself is answered with its status and
/// `x-meshwork-error`.
final class ProxyHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        /// Waiting for a request head.
        case idle
        /// The upstream is being acquired; request parts wait here (reading stops once a
        /// few body parts wait, so little is ever queued).
        case connecting(cluster: LoopCluster, pending: [HTTPClientRequestPart])
        /// Request and response flow through `upstream`.
        case proxying(cluster: LoopCluster, upstream: any Upstream)
        /// A failed try waits out its backoff; request parts wait as in `connecting`.
        case backingOff(cluster: LoopCluster, pending: [HTTPClientRequestPart])
        /// The proxy answered itself; the rest of the request body is discarded.
        case answered
    }

    private let settings: ProxySettings
    private let loop: LoopContext
    /// Where responses go: this handler's own channel (an HTTP/1.1 connection), or one
    /// stream of an HTTP/2 connection carried by `HTTP2ServerStreams` (no channel of its
    /// own; the handler is then driven through its `stream...` entry points).
    private var context: ChannelHandlerContext?
    private let stream: HTTP2ServerStream?
    /// HTTP/2 streams carry one exchange each and have no connection timers.
    private var isStream: Bool { stream != nil }
    private var state = State.idle
    private var requestEnded = false
    private var responseStarted = false
    private var responseEnded = false
    private var keepAlive = true
    private var pendingRead = false
    private var requestStart: NIODeadline = .distantPast
    /// The cluster of a listener that always routes to the same one, looked up once.
    private var fixedCluster: LoopCluster?
    private var responseStatus: HTTPResponseStatus = .ok
    private var requestIsHead = false
    private var requestIsHTTP10 = false
    /// A gRPC call (`content-type: application/grpc...`): the mesh's own answers to it are
    /// gRPC statuses (see `MeshError.grpcStatus`).
    private var isGRPC = false
    /// An HTTP/1.1 `Upgrade` request (WebSocket): it gets a connection of its own, and a
    /// `101` turns both connections into a byte tunnel.
    private var isUpgrade = false
    /// Whether the request announced a body; a mesh answer given before a body is read
    /// closes the connection rather than read and discard an upload of unknown size.
    private var requestHasBody = false
    /// One lazily rescheduled timer per connection: arming only moves `timerDeadline`; the
    /// scheduled task is replaced only when the new deadline is earlier. Keep-alive
    /// connections serving many requests then touch the loop's timer heap rarely.
    private var timerDeadline = NIODeadline.distantFuture
    private var timerError = MeshError.headerTimeout
    private var timerTask: Scheduled<Void>?
    private var timerTaskDeadline = NIODeadline.distantFuture

    // Per-exchange traffic state: admission, retries, inbound protection.
    /// The cluster whose active-requests breaker this exchange holds.
    private var admittedCluster: LoopCluster?
    /// Whether this exchange holds a slot of the inbound concurrency limit.
    private var holdsInboundSlot = false
    /// The called service of an outbound exchange, for its edge telemetry.
    private var edgePeer: String?
    /// Whether a retry is in flight (the cluster's retries breaker is held).
    private var holdsRetry = false
    /// Tries made so far minus one.
    private var attempt = 0
    /// The request parts seen so far, kept (by reference, not copied) while the request is
    /// small enough to send again; nil when it cannot be retried once sent.
    private var replay: [HTTPClientRequestPart]?
    private var replayBytes = 0
    private var requestHash: UInt64?
    private var isIdempotent = false
    /// When the request times out: each try's head carries the time left until then.
    private var deadline = NIODeadline.distantFuture
    private var backoffTask: Scheduled<Void>?
    private var tryTimer: Scheduled<Void>?

    /// The authenticated caller of the connection (inbound over mTLS); nil otherwise.
    private let peer: ConnectionPeer?

    // What tracing and the access log need of the exchange (set only when either is on).
    private var trace: ExchangeTrace?
    private var requestMethod = HTTPMethod.GET
    /// The request target as it came (kept by reference); its path is cut out only for
    /// what records it.
    private var requestURI = ""
    private var requestWallStart: UInt64 = 0
    /// Body bytes of the current exchange, both ways, for its edge.
    private var requestBytes = 0
    private var responseBytes = 0

    /// The exchanges of one HTTP/1.1 connection, in its pipeline.
    init(settings: ProxySettings, loop: LoopContext, peer: ConnectionPeer? = nil) {
        self.settings = settings
        self.loop = loop
        self.peer = peer
        self.stream = nil
    }

    /// The exchange of one HTTP/2 stream, outside any pipeline.
    init(settings: ProxySettings, loop: LoopContext, stream: HTTP2ServerStream, peer: ConnectionPeer?) {
        self.settings = settings
        self.loop = loop
        self.peer = peer
        self.stream = stream
    }

    // MARK: the downstream, whichever it is

    private var hasDownstream: Bool { stream != nil || context != nil }

    private func send(_ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>? = nil) {
        if let stream {
            stream.write(part, promise: promise)
        } else if let context {
            context.write(wrapOutboundOut(part), promise: promise)
        } else {
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    private func flushDownstream() {
        if let stream { stream.flush() } else { context?.flush() }
    }

    private func closeDownstream() {
        if let stream { stream.close() } else { context?.close(promise: nil) }
    }

    private func readDownstream() {
        if let stream { stream.read() } else { context?.read() }
    }

    private var downstreamWritable: Bool { stream?.isWritable ?? context?.channel.isWritable ?? false }

    // MARK: entry points of a stream's exchange (what a channel's events are otherwise)

    func streamReceived(_ part: HTTPServerRequestPart) { received(part) }
    func streamReadComplete() { readComplete() }
    func streamClosed() { downstreamInactive() }
    func streamWritabilityChanged() { writabilityChanged() }
    /// The stream may take more request bytes if the exchange wants them.
    func streamWantsRead() { readRequested() }

    // MARK: lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { connectionStarted(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionStarted(context: context)
        context.fireChannelActive()
    }

    private var started = false

    private func connectionStarted(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        // (Only an HTTP/1.1 connection has a channel to start: a stream's head has arrived.)
        armTimer(settings.headerReadTimeout, error: .headerTimeout)
    }

    func channelInactive(context: ChannelHandlerContext) {
        downstreamInactive()
        context.fireChannelInactive()
    }

    private func downstreamInactive() {
        timerTask?.cancel()
        timerTask = nil
        timerDeadline = .distantFuture
        switch state {
        case .proxying(let cluster, let upstream):
            reportLatency(upstream, cluster)
            upstream.finish()
        case .idle, .connecting, .backingOff, .answered:
            break
        }
        state = .answered
        responseEnded = true
        releaseExchange()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: downstream -> upstream

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received(unwrapInboundIn(data))
    }

    private func received(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            receivedHead(head)
        case .body(let body):
            requestBytes &+= body.readableBytes
            forward(.body(.byteBuffer(body)))
        case .end(let trailers):
            requestEnded = true
            forward(.end(trailers))
            if case .answered = state, responseEnded { exchangeFinished() }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readComplete()
        context.fireChannelReadComplete()
    }

    private func readComplete() {
        if case .proxying(_, let upstream) = state { upstream.flush() }
    }

    private func receivedHead(_ received: HTTPRequestHead) {
        var head = received
        cancelTimer()
        requestStart = loop.loop.now
        requestEnded = false
        responseStarted = false
        responseEnded = false
        requestIsHead = head.method == .HEAD
        requestIsHTTP10 = head.version == .http1_0
        isGRPC = GRPCStatus.isGRPC(contentType: head.headers.first(name: "content-type"))
        keepAlive = head.isKeepAlive
        isUpgrade = !isStream && Self.isUpgradeRequest(head)
        // After an upgrade request the HTTP/1 decoder stops parsing, so the connection
        // carries nothing else: it becomes a tunnel or closes after the answer.
        if isUpgrade { keepAlive = false }
        requestBytes = 0
        responseBytes = 0
        requestHasBody =
            head.headers.contains(name: "transfer-encoding")
            || head.headers.first(name: "content-length").map { $0 != "0" } ?? false
        trace = nil
        if loop.tracer != nil || loop.accessLog != nil || loop.taps != nil { observe(head) }

        if Self.headBytes(head) > settings.maxHeaderBytes {
            keepAlive = false
            answer(.headerTooLarge)
            return
        }
        // One normalized path for everything that matches on it (routes, the gateway,
        // authorization) and for the app: absolute-form reduced to origin-form (its
        // authority is the Host, RFC 9112 3.2.2), then `RequestPath`'s rules.
        if let authority = ProxyRoute.absoluteURIAuthority(head.uri) {
            head.headers.replaceOrAdd(name: "host", value: String(authority))
            head.uri = ProxyRoute.originForm(head.uri)
        }
        switch RequestPath.normalize(head.uri) {
        case .success(let path):
            // (Only when it changed: writing the head's target copies its storage.)
            if path != head.uri { head.uri = path }
        case .failure:
            answer(.badPath)
            return
        }
        edgePeer = nil
        let route: Result<LoopCluster, MeshError>
        if let fixedCluster {
            route = .success(fixedCluster)
        } else {
            route = settings.route.resolve(head, in: loop)
            if settings.route.isFixed, case .success(let cluster) = route { fixedCluster = cluster }
        }
        switch route {
        case .failure(let error):
            answer(error)
        case .success(let cluster):
            edgePeer = cluster.name
            if settings.restoresProtocol, loop.awaitingAuthorization {
                answer(.notReady)
                return
            }
            if loop.requireMTLS, settings.restoresProtocol ? peer == nil : cluster.isMesh && !cluster.usesMTLS {
                settings.metrics.countError(.mtlsRequired)
                answer(.mtlsRequired)
                return
            }
            if settings.restoresProtocol, loop.authorization != nil,
                !loop.authorize(
                    source: peer?.identity,
                    port: loop.authorization?.usesPorts == true
                        ? localPort : 0,
                    method: head.method.rawValue,
                    path: head.uri
                )
            {
                answer(.unauthorized)
                return
            }
            if settings.restoresProtocol, let refusal = admitToApp() {
                answer(refusal)
                return
            }
            if let refusal = cluster.admit() {
                cluster.metrics.countError(refusal)
                answer(refusal)
                return
            }
            admittedCluster = cluster
            attempt = 0
            isIdempotent = Self.idempotentMethods.contains(head.method)
            requestHash = cluster.hashOn.flatMap { requestHash(for: $0, head: head) }
            let timeout = Deadlines.timeout(for: head, routeTimeout: cluster.requestTimeout)
            deadline = requestStart + timeout
            var upstreamHead = self.upstreamHead(head, mesh: cluster.isMesh, upgrade: isUpgrade)
            if cluster.isMesh { Deadlines.propagate(tryTimeout(cluster, left: timeout), in: &upstreamHead.headers) }
            if let trace, let header = trace.header {
                if trace.replaces {
                    upstreamHead.headers.replaceOrAdd(name: LoopTracer.parentHeader, value: header)
                } else {
                    upstreamHead.headers.add(name: LoopTracer.parentHeader, value: header)
                }
                if trace.dropsState { upstreamHead.headers.remove(name: LoopTracer.stateHeader) }
            }
            replay = cluster.retryPolicy.attempts > 0 && !isUpgrade ? [.head(upstreamHead)] : nil
            replayBytes = 0
            state = .connecting(cluster: cluster, pending: [.head(upstreamHead)])
            armTimer(timeout, error: .upstreamTimeout)
            startTry(cluster)
        }
    }

    /// Inbound protection: the rate limit (429) and the adaptive concurrency limit (503),
    /// checked before the request goes anywhere near the app.
    private func admitToApp() -> MeshError? {
        let now = loop.loop.now.uptimeNanoseconds
        if loop.inboundRateLimit?.tryTake(now: now) == false {
            loop.logger.debug("request shed: over the inbound rate limit")
            return .rateLimited
        }
        switch loop.inboundLimiter?.tryAcquire(now: now) {
        case .some(false):
            loop.logger.debug(
                "request shed: inbound concurrency limit reached",
                metadata: ["limit": "\(loop.inboundLimiter?.limit ?? 0)"]
            )
            return .concurrencyLimited
        case .some(true): holdsInboundSlot = true
        case .none: break
        }
        return nil
    }

    /// The port the caller connected to (of the connection, for a stream).
    private var localPort: Int {
        if let stream { return stream.localAddress?.port ?? 0 }
        guard let channel = context?.channel else { return 0 }
        return (channel.parent ?? channel).localAddress?.port ?? 0
    }

    private var remoteAddress: SocketAddress? { stream?.remoteAddress ?? context?.channel.remoteAddress }

    private func requestHash(for key: HashKey, head: HTTPRequestHead) -> UInt64? {
        switch key {
        case .header(let name):
            return head.headers.first(name: name).map { StableHash.hash($0) }
        case .sourceIP:
            return remoteAddress?.ipAddress.map { StableHash.hash($0) }
        }
    }

    /// Sends the request (again) to an endpoint the cluster picks; a retry avoids the
    /// endpoint that just failed when there is another.
    private func startTry(_ cluster: LoopCluster, avoiding: Int? = nil) {
        let acquired: LoopCluster.Acquired = { [weak self] result, endpoint in
            self?.upstreamAcquired(result, endpoint: endpoint, cluster: cluster)
        }
        if isUpgrade {
            cluster.acquireUpgrade(hash: requestHash, acquired)
        } else {
            cluster.acquire(hash: requestHash, avoiding: avoiding, acquired)
        }
    }

    /// The time the next hop gets for this try: what is left of the request's, or less
    /// when each try has its own timeout (the hop then gives up when this try does).
    private func tryTimeout(_ cluster: LoopCluster, left: TimeAmount) -> TimeAmount {
        guard let perTry = cluster.retryPolicy.perTryTimeout else { return left }
        return min(left, .nanoseconds(perTry.nanoseconds))
    }

    /// The retry decision of every failure path (`RetryPolicy.verdict`): `sent` says
    /// whether any of the request left for the endpoint. On `.retry` the retry budget and
    /// the retries breaker have given a token this exchange now holds.
    private func retryVerdict(_ failure: TryFailure, _ cluster: LoopCluster, sent: Bool) -> RetryVerdict {
        let context = TryContext(
            idempotent: isIdempotent,
            requestSent: sent,
            responseStarted: responseStarted,
            // Unsent, every part is still pending; sent, only what `replay` kept.
            replayable: !sent || replay != nil,
            attempt: attempt,
            timeLeft: .nanoseconds((deadline - loop.loop.now).nanoseconds)
        )
        return cluster.retryPolicy.verdict(after: failure, context) {
            guard cluster.tryRetry() else { return false }
            if holdsRetry { cluster.retryEnded() }
            holdsRetry = true
            return true
        }
    }

    /// Sends `parts` again after the cluster's backoff, to another endpoint when there is
    /// one, with the head's deadline rewritten to the time then left.
    private func scheduleRetry(_ cluster: LoopCluster, parts: [HTTPClientRequestPart], failedEndpoint: Int?) {
        let delay = cluster.backoff(attempt: attempt)
        attempt += 1
        tryTimer?.cancel()
        tryTimer = nil
        state = .backingOff(cluster: cluster, pending: parts)
        backoffTask = loop.loop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self, case .backingOff(let current, var pending) = self.state, current === cluster else { return }
            self.backoffTask = nil
            if cluster.isMesh, case .head(var head) = pending.first {
                let left = self.deadline - self.loop.loop.now
                Deadlines.propagate(self.tryTimeout(cluster, left: left), in: &head.headers)
                pending[0] = .head(head)
            }
            self.state = .connecting(cluster: cluster, pending: pending)
            self.startTry(cluster, avoiding: failedEndpoint)
        }
    }

    /// Gives back what the exchange held: the breaker slots and the inbound limit's slot
    /// (with the latency sample the limit learns from). Safe to call more than once.
    private func releaseExchange() {
        backoffTask?.cancel()
        backoffTask = nil
        tryTimer?.cancel()
        tryTimer = nil
        replay = nil
        if let cluster = admittedCluster {
            admittedCluster = nil
            if holdsRetry { cluster.retryEnded() }
            cluster.requestEnded()
        }
        holdsRetry = false
        if holdsInboundSlot {
            holdsInboundSlot = false
            let learnt = responseEnded && responseStatus.code < 500
            loop.inboundLimiter?.release(
                rtt: learnt ? .nanoseconds(elapsed()) : nil,
                now: loop.loop.now.uptimeNanoseconds
            )
        }
    }

    static let idempotentMethods: [HTTPMethod] = [.GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE]
    /// Request bodies up to this size are kept so the request can be sent again.
    static let maxReplayBytes = 64 * 1024

    private func forward(_ part: HTTPClientRequestPart) {
        if replay != nil {
            if case .body(.byteBuffer(let buffer)) = part { replayBytes += buffer.readableBytes }
            if replayBytes > Self.maxReplayBytes {
                replay = nil
            } else {
                replay!.append(part)
            }
        }
        switch state {
        case .connecting(let cluster, var pending):
            pending.append(part)
            state = .connecting(cluster: cluster, pending: pending)
        case .backingOff(let cluster, var pending):
            pending.append(part)
            state = .backingOff(cluster: cluster, pending: pending)
        case .proxying(_, let upstream):
            upstream.write(part)
        case .idle, .answered:
            break
        }
    }

    private func upstreamAcquired(_ result: Result<any Upstream, MeshError>, endpoint: Int?, cluster: LoopCluster) {
        guard hasDownstream, case .connecting(let current, let pending) = state, current === cluster else {
            // The exchange ended (timeout, client gone) while we waited: give the
            // connection back untouched.
            if case .success(let upstream) = result {
                reportLatency(upstream, cluster)
                upstream.finish()
            }
            return
        }
        switch result {
        case .failure(let error):
            cluster.metrics.countError(error)
            // Nothing was sent: every part is still here, whatever the request's size.
            // (A reset here is a stream that could not be opened on a connection that just died.)
            let failure: TryFailure? =
                switch error {
                case .connectFailed, .connectTimeout: .connectFailure
                case .upstreamReset: .reset
                default: nil
                }
            if let failure, retryVerdict(failure, cluster, sent: false) == .retry {
                scheduleRetry(cluster, parts: pending, failedEndpoint: endpoint)
                return
            }
            answer(error)
        case .success(let upstream):
            upstream.begin(delegate: self)
            state = .proxying(cluster: cluster, upstream: upstream)
            if let perTry = cluster.retryPolicy.perTryTimeout {
                tryTimer = loop.loop.assumeIsolated().scheduleTask(in: .nanoseconds(perTry.nanoseconds)) {
                    [weak self] in
                    self?.tryTimedOut(upstream)
                }
            }
            for part in pending { upstream.write(part) }
            upstream.flush()
            if pendingRead, upstream.isWritable {
                pendingRead = false
                readDownstream()
            }
        }
    }

    // MARK: backpressure

    func read(context: ChannelHandlerContext) {
        readRequested()
    }

    private func readRequested() {
        switch state {
        case .connecting(_, let pending) where !requestEnded && pending.count >= Self.maxPendingParts,
            .backingOff(_, let pending) where !requestEnded && pending.count >= Self.maxPendingParts:
            // Bound what waits for the upstream; a request that has ended reads on (the
            // next pipelined request is held by the HTTP pipeline handler).
            pendingRead = true
        case .proxying(_, let upstream) where !upstream.isWritable:
            pendingRead = true
        case .idle, .answered, .proxying, .connecting, .backingOff:
            readDownstream()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    private func writabilityChanged() {
        if downstreamWritable, case .proxying(_, let upstream) = state {
            upstream.resumeReading()
        }
    }

    // MARK: errors and timers

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parserError = error as? HTTPParserError {
            keepAlive = false
            answer(parserError == .headerOverflow ? .headerTooLarge : .badRequest)
        } else {
            context.close(promise: nil)
        }
    }

    private func armTimer(_ timeout: TimeAmount, error: MeshError) {
        timerDeadline = loop.loop.now + timeout
        timerError = error
        if timerTask == nil || timerTaskDeadline > timerDeadline {
            scheduleTimerTask(at: timerDeadline)
        }
    }

    private func cancelTimer() {
        timerDeadline = .distantFuture
    }

    private func scheduleTimerTask(at deadline: NIODeadline) {
        guard hasDownstream else { return }
        timerTask?.cancel()
        timerTaskDeadline = deadline
        timerTask = loop.loop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.timerTick()
        }
    }

    private func timerTick() {
        timerTask = nil
        timerTaskDeadline = .distantFuture
        guard timerDeadline != .distantFuture else { return }
        if loop.loop.now < timerDeadline {
            scheduleTimerTask(at: timerDeadline)
        } else {
            timerDeadline = .distantFuture
            timerFired(timerError)
        }
    }

    private func timerFired(_ error: MeshError) {
        guard hasDownstream else { return }
        switch state {
        case .idle:
            // Idle keep-alive connection, or a client too slow to send its head.
            if error == .headerTimeout, let context {
                // No request head is being answered, so the HTTP pipeline would refuse a
                // response: the 408 goes out as raw bytes below the HTTP encoder.
                settings.metrics.countError(error)
                sendRawAndClose(error, context: context)
            } else {
                closeDownstream()
            }
        case .connecting(let cluster, _), .proxying(let cluster, _), .backingOff(let cluster, _):
            cluster.metrics.countError(error)
            if case .proxying(_, let upstream) = state {
                if let index = upstream.endpointIndex { cluster.record(index, .gatewayFailure) }
                reportLatency(upstream, cluster)
                upstream.finish()
            }
            state = .answered
            if responseStarted {
                abortStartedResponse(error)
            } else {
                keepAlive = false
                answer(error)
            }
        case .answered:
            break
        }
    }

    /// Answers the current request with a mesh error.
    private func answer(_ error: MeshError) {
        settings.metrics.countError(error)
        if case .proxying(let cluster, let upstream) = state {
            reportLatency(upstream, cluster)
            upstream.finish()
        }
        state = .answered
        guard !responseStarted else {
            abortStartedResponse(error, counted: true)
            return
        }
        if !requestEnded, requestHasBody { keepAlive = false }
        let body = "\(error.reason)\n"
        var headers: HTTPHeaders
        let status: HTTPResponseStatus
        if isGRPC {
            // Trailers-Only (HTTP 200, the status in the head, no body): what a gRPC client
            // reads as this call's outcome.
            status = .ok
            headers = error.grpcFields(unauthenticated: isUnauthenticated(error))
            headers.add(name: "content-type", value: "application/grpc")
            headers.add(name: "content-length", value: "0")
        } else {
            status = error.status
            headers = HTTPHeaders()
            headers.reserveCapacity(4)
            headers.add(name: MeshError.headerName, value: error.reason)
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(body.utf8.count))
        }
        if !keepAlive, !isStream { headers.add(name: "connection", value: "close") }
        responseStarted = true
        // The mesh error's status, also for a gRPC answer's HTTP 200: what the inbound
        // limiter learns from.
        responseStatus = error.status
        send(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
        if !requestIsHead, !isGRPC {
            send(.body(.byteBuffer(ByteBuffer(string: body))))
        }
        responseEnded = true
        // Counted as the mesh error it is (a gRPC answer's HTTP 200 included), before the
        // answer leaves.
        let nanos = elapsed()
        settings.metrics.countRequest(status: error.status, nanoseconds: nanos, loop: loop.index)
        let closing = !keepAlive && !isStream
        let promise: EventLoopPromise<Void>? = closing ? loop.loop.makePromise() : nil
        send(.end(nil), promise: promise)
        flushDownstream()
        if let promise {
            promise.futureResult.assumeIsolated().whenComplete { _ in self.closeDownstream() }
        }
        recordExchange(status: error.status, nanoseconds: nanos, error: error)
        releaseExchange()
        if requestEnded || closing {
            exchangeFinished(alreadyClosing: closing)
        }
        // Otherwise the exchange finishes when the request's end arrives (channelRead).
    }

    /// A failure after the response began: a gRPC call ends with the error's status in its
    /// trailers (its messages so far stand, and the client learns why it ended, rather than
    /// CANCELLED from a reset); anything else can only be cut off.
    private func abortStartedResponse(_ error: MeshError, counted: Bool = false) {
        if !counted { settings.metrics.countError(error) }
        releaseExchange()
        guard isGRPC, !responseEnded, hasDownstream else {
            closeDownstream()
            return
        }
        responseEnded = true
        send(.end(error.grpcFields(unauthenticated: false)))
        flushDownstream()
        if !isStream {
            // An HTTP/1.1 connection whose request may not have ended cannot be reused.
            closeDownstream()
        }
    }

    /// A refusal of a caller that presented no workload identity (UNAUTHENTICATED for gRPC).
    private func isUnauthenticated(_ error: MeshError) -> Bool {
        error == .unauthorized && settings.restoresProtocol && peer?.identity == nil
    }

    private func sendRawAndClose(_ error: MeshError, context: ChannelHandlerContext) {
        state = .answered
        let body = "\(error.reason)\n"
        let text =
            "HTTP/1.1 \(error.status.code) \(error.status.reasonPhrase)\r\n\(MeshError.headerName): \(error.reason)\r\n"
            + "content-type: text/plain\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n\(body)"
        guard let encoder = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self) else {
            context.close(promise: nil)
            return
        }
        encoder.writeAndFlush(NIOAny(IOData.byteBuffer(context.channel.allocator.buffer(string: text))))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// Counts the exchange on its edge (inbound by the caller's service, from its
    /// certificate; outbound by the called service), records its span when the trace is
    /// sampled, and writes its access log line.
    private func recordExchange(status: HTTPResponseStatus, nanoseconds: Int64, error: MeshError? = nil) {
        let inbound = settings.restoresProtocol
        let peerName = inbound ? (peer?.serviceName ?? "unauthenticated") : (edgePeer ?? "unrouted")
        let sampled = trace?.sampled == true && loop.tracer != nil
        let path = sampled || loop.taps != nil || loop.accessLog != nil ? Self.path(of: requestURI) : ""
        if let shard = loop.edges {
            shard.record(
                EdgeKey(direction: inbound ? .inbound : .outbound, peer: peerName),
                EdgeExchange(
                    status: Int(status.code),
                    micros: UInt64(max(0, nanoseconds / 1000)),
                    requestBytes: UInt64(requestBytes),
                    responseBytes: UInt64(responseBytes),
                    meshError: error?.reason
                )
            )
        }
        if sampled, let trace, let tracer = loop.tracer {
            tracer.shard.record(
                SpanRecord(
                    traceID: trace.traceID,
                    spanID: trace.spanID,
                    parentSpanID: trace.parentSpanID,
                    kind: inbound ? .server : .client,
                    method: requestMethod.rawValue,
                    path: path,
                    peer: peerName,
                    status: Int(status.code),
                    meshError: error?.reason,
                    startUnixNanos: trace.startUnixNanos,
                    endUnixNanos: trace.startUnixNanos + UInt64(max(0, nanoseconds))
                )
            )
        }
        guard loop.taps != nil || loop.accessLog != nil else { return }
        let record = ExchangeRecord(
            direction: inbound ? .inbound : .outbound,
            source: inbound ? peerName : loop.service,
            target: inbound ? loop.service : peerName,
            method: requestMethod.rawValue,
            path: path,
            status: Int(status.code),
            nanoseconds: nanoseconds,
            meshError: error?.reason,
            traceID: trace?.traceID,
            spanID: trace.flatMap { $0.sampled ? $0.spanID : nil }
        )
        loop.taps?.offer(record, now: loop.loop.now.uptimeNanoseconds)
        loop.accessLog?.log(record, unixNanos: requestWallStart)
    }

    /// Keeps what tracing and the access log need of the request, and begins its trace.
    private func observe(_ head: HTTPRequestHead) {
        requestMethod = head.method
        requestURI = head.uri
        trace = loop.tracer?.begin(head.headers)
        if loop.accessLog != nil {
            requestWallStart = trace.map { $0.startUnixNanos } ?? 0
            if requestWallStart == 0 { requestWallStart = LoopTracer.unixNanos() }
        }
    }

    /// The path of a request target: origin form, without the query string (it may carry
    /// secrets).
    static func path(of uri: String) -> String {
        let target = ProxyRoute.absoluteURIAuthority(uri) != nil ? ProxyRoute.originForm(uri) : uri
        guard let query = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
        return String(target[..<query])
    }

    /// Reports the exchange's latency to the cluster's balancer, once.
    private func reportLatency(_ upstream: any Upstream, _ cluster: LoopCluster) {
        guard let index = upstream.endpointIndex else { return }
        upstream.endpointIndex = nil
        cluster.requestFinished(index, nanoseconds: elapsed())
    }

    private func elapsed() -> Int64 {
        (loop.loop.now - requestStart).nanoseconds
    }

    /// Both directions are done: reset for the next request on this connection.
    private func exchangeFinished(alreadyClosing: Bool = false) {
        cancelTimer()
        releaseExchange()
        if case .proxying(_, let upstream) = state { upstream.finish() }
        state = .idle
        if isStream || alreadyClosing { return }
        if keepAlive {
            armTimer(settings.idleTimeout, error: .upstreamTimeout)
        } else {
            closeDownstream()
        }
    }

    /// Size of the request line and headers as they came over the wire.
    static func headBytes(_ head: HTTPRequestHead) -> Int {
        var total = head.uri.utf8.count + 16
        for (name, value) in head.headers {
            total += name.utf8.count + value.utf8.count + 4
        }
        return total
    }
}

// MARK: upstream -> downstream

extension ProxyHandler: UpstreamDelegate {
    var downstreamIsWritable: Bool { downstreamWritable }

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        guard hasDownstream, case .proxying(let cluster, let upstream) = state else {
            return
        }
        switch part {
        case .head(var head):
            if head.status.code < 200, head.status != .switchingProtocols {
                // 100 Continue, 103 Early Hints and other interim answers pass through, in
                // the caller's HTTP version (never to an HTTP/1.0 caller: RFC 9110 15.2).
                guard !requestIsHTTP10 else { return }
                Self.removeHopByHop(&head.headers)
                head.version = .http1_1
                send(.head(head))
                return
            }
            tryTimer?.cancel()
            tryTimer = nil
            if let index = upstream.endpointIndex {
                cluster.record(index, ExchangeOutcome(status: Int(head.status.code)))
                if head.status.code >= 500,
                    retryVerdict(.status(Int(head.status.code)), cluster, sent: true) == .retry,
                    let parts = replay
                {
                    // Not a byte of this answer has reached the client: try elsewhere.
                    reportLatency(upstream, cluster)
                    upstream.finish()
                    scheduleRetry(cluster, parts: parts, failedEndpoint: index)
                    return
                }
            }
            // Time to the answer's head is what the balancer learns from.
            reportLatency(upstream, cluster)
            if head.status == .switchingProtocols {
                guard isUpgrade, let context else {
                    // A 101 nobody asked for cannot be honoured.
                    upstreamFailed(.protocolError)
                    return
                }
                switchToTunnel(head, upstream: upstream, cluster: cluster, context: context)
                return
            }
            responseStarted = true
            responseStatus = head.status
            Self.removeHopByHop(&head.headers)
            head.version = .http1_1
            if !keepAlive, !isStream { head.headers.add(name: "connection", value: "close") }
            send(.head(head))
        case .body(let body):
            responseBytes &+= body.readableBytes
            send(.body(.byteBuffer(body)))
        case .end(let trailers):
            responseEnded = true
            // Counted before the end leaves: a caller that has its answer finds it counted.
            let nanos = elapsed()
            settings.metrics.countRequest(status: responseStatus, nanoseconds: nanos, loop: loop.index)
            cluster.metrics.countRequest(status: responseStatus, nanoseconds: nanos, loop: loop.index)
            // Flush now: the upstream is released below and will not report its read
            // completion to us.
            send(.end(trailers))
            flushDownstream()
            recordExchange(status: responseStatus, nanoseconds: nanos)
            upstream.endpoint?.countRequest(status: responseStatus)
            if !requestEnded {
                // The upstream answered before the request finished (an early 413, say):
                // the rest of the request cannot be resynchronised, so this connection ends.
                upstream.finish()
                state = .answered
                keepAlive = false
                cancelTimer()
                releaseExchange()
                if !isStream {
                    closeDownstream()
                }
                return
            }
            exchangeFinished()
        }
    }

    /// Answers `101 Switching Protocols` and, once the codecs have finished with their
    /// current bytes, replaces the HTTP handlers of both connections with a byte splice.
    private func switchToTunnel(
        _ head: HTTPResponseHead,
        upstream: any Upstream,
        cluster: LoopCluster,
        context: ChannelHandlerContext
    ) {
        var out = head
        let protocols = head.headers[canonicalForm: "upgrade"].joined(separator: ", ")
        Self.removeHopByHop(&out.headers)
        out.headers.add(name: "connection", value: "upgrade")
        out.headers.add(name: "upgrade", value: protocols)
        responseStarted = true
        responseEnded = true
        responseStatus = head.status
        cancelTimer()
        state = .answered
        releaseExchange()
        context.writeAndFlush(wrapOutboundOut(.head(out)), promise: nil)
        let nanos = elapsed()
        settings.metrics.countRequest(status: head.status, nanoseconds: nanos, loop: loop.index)
        cluster.metrics.countRequest(status: head.status, nanoseconds: nanos, loop: loop.index)
        recordExchange(status: head.status, nanoseconds: nanos)
        upstream.endpoint?.countRequest(status: head.status)
        context.eventLoop.assumeIsolated().execute {
            let downstreamGlue = GlueHandler()
            let upstreamGlue = GlueHandler()
            do {
                try upstream.becomeTunnel(glue: upstreamGlue)
                let pipeline = context.pipeline.syncOperations
                try pipeline.addHandler(downstreamGlue)
                func remove<Handler: RemovableChannelHandler>(_ type: Handler.Type) {
                    if let handlerContext = try? pipeline.context(handlerType: type) {
                        pipeline.removeHandler(context: handlerContext, promise: nil)
                    }
                }
                remove(HTTPServerPipelineHandler.self)
                remove(NIOHTTPResponseHeadersValidator.self)
                remove(HTTPServerUpgradeHandler.self)
                pipeline.removeHandler(context: context, promise: nil)
                remove(HTTPResponseEncoder.self)
                // Last: bytes the decoder read past the request head go on to the glue.
                remove(ByteToMessageHandler<HTTPRequestDecoder>.self)
                GlueHandler.pair(downstreamGlue, upstreamGlue)
            } catch {
                upstream.close()
                context.close(promise: nil)
            }
        }
    }

    func upstreamReadComplete() {
        flushDownstream()
    }

    func upstreamFailed(_ error: MeshError) {
        guard hasDownstream, case .proxying(let cluster, let upstream) = state else { return }
        let endpoint = upstream.endpointIndex
        if let endpoint { cluster.record(endpoint, .gatewayFailure) }
        reportLatency(upstream, cluster)
        cluster.metrics.countError(error)
        if error == .upstreamReset, retryVerdict(.reset, cluster, sent: true) == .retry, let parts = replay {
            upstream.finish()
            scheduleRetry(cluster, parts: parts, failedEndpoint: endpoint)
            return
        }
        state = .answered
        if responseStarted {
            abortStartedResponse(error)
        } else {
            answer(error)
        }
    }

    /// The per-try timeout fired before the answer's head: the try counts as a gateway
    /// failure and is retried when allowed; otherwise the request times out.
    private func tryTimedOut(_ upstream: any Upstream) {
        tryTimer = nil
        guard hasDownstream, case .proxying(let cluster, let current) = state, current === upstream, !responseStarted
        else { return }
        let endpoint = upstream.endpointIndex
        if let endpoint { cluster.record(endpoint, .gatewayFailure) }
        reportLatency(upstream, cluster)
        cluster.metrics.countError(.upstreamTimeout)
        upstream.finish()
        if retryVerdict(.perTryTimeout, cluster, sent: true) == .retry, let parts = replay {
            scheduleRetry(cluster, parts: parts, failedEndpoint: endpoint)
            return
        }
        state = .answered
        keepAlive = false
        answer(.upstreamTimeout)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        guard isWritable, pendingRead, hasDownstream else { return }
        pendingRead = false
        readDownstream()
    }
}

extension ProxyHandler {
    /// Connection-specific headers (RFC 9110 section 7.6.1) are not forwarded.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        for token in headers[canonicalForm: "connection"] {
            headers.remove(name: String(token))
        }
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"]
        where headers.contains(name: name) {
            headers.remove(name: name)
        }
    }

    /// The head sent upstream: hop-by-hop headers removed, origin-form target, and for mesh
    /// hops the caller's HTTP version in `x-meshwork-proto`.
    func upstreamHead(_ head: HTTPRequestHead, mesh: Bool, upgrade: Bool) -> HTTPRequestHead {
        Self.upstreamHead(head, mesh: mesh, upgrade: upgrade, restoresProtocol: settings.restoresProtocol)
    }

    /// The head as it goes upstream: hop-by-hop fields out, origin-form, and the caller's
    /// HTTP version carried to (or restored from) the peer sidecar.
    static func upstreamHead(
        _ head: HTTPRequestHead,
        mesh: Bool,
        upgrade: Bool,
        restoresProtocol: Bool
    ) -> HTTPRequestHead {
        var out = head
        let te = head.headers[canonicalForm: "te"].contains { $0.lowercased() == "trailers" }
        let protocols = head.headers[canonicalForm: "upgrade"].joined(separator: ", ")
        Self.removeHopByHop(&out.headers)
        if te { out.headers.add(name: "te", value: "trailers") }
        if upgrade {
            out.headers.add(name: "connection", value: "upgrade")
            out.headers.add(name: "upgrade", value: protocols)
        }
        if let authority = ProxyRoute.absoluteURIAuthority(head.uri) {
            out.uri = ProxyRoute.originForm(head.uri)
            out.headers.replaceOrAdd(name: "host", value: String(authority))
        }
        if restoresProtocol {
            if let proto = out.headers.first(name: ProxyHandler.protoHeader) {
                out.headers.remove(name: ProxyHandler.protoHeader)
                if proto == "HTTP/1.0" { out.version = .http1_0 }
            }
            if out.version.major == 2 { out.version = .http1_1 }
        } else if mesh, !upgrade {
            out.headers.replaceOrAdd(
                name: ProxyHandler.protoHeader,
                value: "HTTP/\(head.version.major).\(head.version.minor)"
            )
        }
        if out.version.major == 2 { out.version = .http1_1 }
        // A body whose length is unknown travels chunked on HTTP/1.1.
        if !mesh, head.headers.contains(name: "transfer-encoding"), !out.headers.contains(name: "content-length") {
            out.headers.add(name: "transfer-encoding", value: "chunked")
        }
        return out
    }

    static let protoHeader = "x-meshwork-proto"

    /// `Upgrade` with `Connection: upgrade` (RFC 9110 section 7.8).
    static func isUpgradeRequest(_ head: HTTPRequestHead) -> Bool {
        head.headers.contains(name: "upgrade")
            && head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// Request parts (head and body chunks) held while the upstream is acquired before
    /// reading stops.
    static let maxPendingParts = 16
}

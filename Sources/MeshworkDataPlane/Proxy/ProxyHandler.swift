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
///
/// A thin shell around `ExchangeStateMachine`, which makes every decision: this class feeds
/// it the events of the downstream, the upstream and the timers, and performs what it
/// returns on the cluster, the upstream, the downstream and the telemetry.
final class ProxyHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let settings: ProxySettings
    private let loop: LoopContext
    /// The authenticated caller of the connection (inbound over mTLS); nil otherwise.
    private let peer: ConnectionPeer?
    private var machine: ExchangeStateMachine
    /// Where responses go: this handler's own channel (an HTTP/1.1 connection, `context`),
    /// or one stream of an HTTP/2 connection carried by `HTTP2ServerStreams` (no channel of
    /// its own; the handler is then driven through its `stream...` entry points).
    private var downstream: (any Downstream)?
    private var context: ChannelHandlerContext?
    private var telemetry = ExchangeTelemetry()

    // What the exchange holds while it runs.
    /// The cluster the request was routed to.
    private var cluster: LoopCluster?
    /// The cluster of a listener that always routes to the same one, looked up once.
    private var fixedCluster: LoopCluster?
    /// The current try's upstream, while the machine is proxying.
    private var upstream: (any Upstream)?
    /// Whether the exchange holds a slot of the cluster's active-requests breaker.
    private var admitted = false
    /// Whether a retry is in flight (the cluster's retries breaker is held).
    private var holdsRetry = false
    /// Whether this exchange holds a slot of the inbound concurrency limit.
    private var holdsInboundSlot = false
    private var requestHash: UInt64?
    private var requestStart: NIODeadline = .distantPast
    private var responseStatus: HTTPResponseStatus = .ok

    // Timers.
    /// One lazily rescheduled timer per connection (header read, idle, the request's
    /// deadline): arming only moves `timerDeadline`; the scheduled task is replaced only
    /// when the new deadline is earlier. Keep-alive connections serving many requests then
    /// touch the loop's timer heap rarely.
    private var timerDeadline = NIODeadline.distantFuture
    private var timerIsHeaderRead = true
    private var timerTask: Scheduled<Void>?
    private var timerTaskDeadline = NIODeadline.distantFuture
    private var backoffTask: Scheduled<Void>?
    /// The selected route rule's response header changes and retry backoff, if any.
    private var responseEdits: RouteFilter.HeaderEdits?
    /// A gateway rule's response edits, when a service's own rule decided after it.
    private var outerResponseEdits: RouteFilter.HeaderEdits?
    private var routeBackoff: TimeAmount?
    /// Whether the request is waiting out a route's fault delay (it has not left yet).
    private var inFaultDelay = false
    /// The mirrored copy of the current request, while the request's body streams past.
    private var mirror: MirrorExchange?
    private var tryTimer: Scheduled<Void>?
    private var started = false
    /// HTTP/1.1 pipelining, done here rather than by NIO's `HTTPServerPipelineHandler`:
    /// that handler withheld the connection's read while each response was in flight, and
    /// NIO dropped and re-added the socket's read interest around every exchange (two
    /// `epoll_ctl` calls per request, a third of the syscalls a request made). Here reads
    /// go on; parts of a request that came while the one before it was still answered wait
    /// in order (no read while any wait) and are taken when its exchange ends.
    private var pipelined = CircularBuffer<HTTPServerRequestPart>()
    /// A request's head was taken and its exchange has not ended; its end was taken.
    private var exchangeOpen = false
    private var exchangeRequestEnded = false
    /// A read was asked for while pipelined parts waited.
    private var heldRead = false
    /// The server is draining (`ChannelShouldQuiesceEvent`): close after this exchange.
    private var quiescing = false

    /// The exchanges of one HTTP/1.1 connection, in its pipeline.
    init(settings: ProxySettings, loop: LoopContext, peer: ConnectionPeer? = nil) {
        self.settings = settings
        self.loop = loop
        self.peer = peer
        self.machine = ExchangeStateMachine(isStream: false)
    }

    /// The exchange of one HTTP/2 stream, outside any pipeline.
    init(settings: ProxySettings, loop: LoopContext, stream: HTTP2ServerStream, peer: ConnectionPeer?) {
        self.settings = settings
        self.loop = loop
        self.peer = peer
        self.machine = ExchangeStateMachine(isStream: true)
        self.downstream = stream
    }

    private func send(_ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>? = nil) {
        if let downstream {
            downstream.write(part, promise: promise)
        } else {
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

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
        self.downstream = ChannelDownstream(context: context)
        if context.channel.isActive { connectionStarted() }
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionStarted()
        context.fireChannelActive()
    }

    private func connectionStarted() {
        guard !started else { return }
        started = true
        // (Only an HTTP/1.1 connection has a channel to start: a stream's head has arrived.)
        armTimer(settings.headerReadTimeout, headerRead: true)
    }

    func channelInactive(context: ChannelHandlerContext) {
        downstreamInactive()
        context.fireChannelInactive()
    }

    private func downstreamInactive() {
        // Requests pipelined behind the exchange of a caller that went away are not taken.
        pipelined.removeAll()
        heldRead = false
        timerTask?.cancel()
        timerTask = nil
        timerDeadline = .distantFuture
        machine.downstreamClosed()
        if let mirror {
            self.mirror = nil
            mirror.abandon()
        }
        // Whatever the machine's state: an HTTP/2 stream closes as its response's end is
        // written, when the machine has already finished the exchange but the upstream is
        // still held (`finish` lets it go next).
        letUpstreamGo()
        releaseExchange()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.downstream = nil
    }

    // MARK: downstream -> upstream

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        // (The next request of a pipelining client waits for this one's answer.)
        if !pipelined.isEmpty || (exchangeOpen && exchangeRequestEnded) {
            pipelined.append(part)
            return
        }
        take(part)
    }

    /// A part of the connection's current request (HTTP/1.1).
    private func take(_ part: HTTPServerRequestPart) {
        switch part {
        case .head:
            exchangeOpen = true
            exchangeRequestEnded = false
        case .end:
            exchangeRequestEnded = true
        case .body:
            break
        }
        received(part)
    }

    /// The parts that waited for the exchange that just ended, up to the end of the next
    /// request; then reads go on when none is left.
    private func takePipelined() {
        guard downstream != nil, context?.channel.isActive == true else {
            pipelined.removeAll()
            return
        }
        var took = false
        while !(exchangeOpen && exchangeRequestEnded), let part = pipelined.popFirst() {
            take(part)
            took = true
        }
        if took { readComplete() }
        if pipelined.isEmpty, heldRead {
            heldRead = false
            readRequested()
        }
    }

    /// Reads the downstream, unless pipelined parts wait (then when they have been taken).
    private func readDownstream() {
        if pipelined.isEmpty {
            downstream?.read()
        } else {
            heldRead = true
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // Draining: an idle connection closes now, a busy one after its answer (which
        // says `connection: close`); requests pipelined behind it are not taken.
        quiescing = true
        if !exchangeOpen { context.close(promise: nil) }
    }

    private func received(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            receivedHead(head)
        case .body(let body):
            telemetry.requestBytes &+= body.readableBytes
            if let mirror, !mirror.append(body) { self.mirror = nil }
            forward(.body(.byteBuffer(body)))
        case .end(let trailers):
            if let mirror {
                self.mirror = nil
                mirror.send(trailers: trailers)
            }
            forward(.end(trailers))
        }
    }

    private func forward(_ part: HTTPClientRequestPart) {
        switch machine.requestPart(part) {
        case .none: break
        case .forward: upstream?.write(part)
        case .finished(let next): finish(next)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readComplete()
        context.fireChannelReadComplete()
    }

    private func readComplete() {
        if machine.isProxying { upstream?.flush() }
    }

    private func receivedHead(_ received: HTTPRequestHead) {
        var head = received
        cancelTimer()
        requestStart = loop.loop.now
        responseStatus = .ok
        let scan = RequestHeadScan(head)
        machine.requestHead(
            ExchangeStateMachine.Request(
                keepAlive: head.isKeepAlive,
                isHTTP10: head.version == .http1_0,
                isHEAD: head.method == .HEAD,
                isGRPC: GRPCStatus.isGRPC(contentType: scan.contentType),
                isUpgrade: !machine.isStream && scan.isUpgrade,
                hasBody: scan.hasBody
            )
        )
        telemetry.begin(head, loop: loop)

        if scan.bytes > settings.maxHeaderBytes {
            answer(.headerTooLarge, closing: true)
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
        // A gateway listener's pushed routes decide first (their rules name the backends);
        // else the listener's configured routes, or the port's fixed route, name a cluster,
        // and a called service's own routes may then decide.
        var rule: LoopRule?
        var selection: RouteTable.Selection?
        if case .gateway(let listener) = settings.route, !loop.gatewayHTTPRoutes.isEmpty,
            let routes = loop.gatewayHTTPRoutes[listener],
            let selected = routes.select(
                head,
                host: head.headers.first(name: "host").map { GatewayRoute.hostName(Substring($0)) }
            )
        {
            (rule, selection) = selected
        }
        var cluster: LoopCluster?
        if rule == nil {
            let route: Result<LoopCluster, MeshError>
            if let fixedCluster {
                route = .success(fixedCluster)
            } else {
                route = settings.route.resolve(head, in: loop)
                if settings.route.isFixed, case .success(let cluster) = route { fixedCluster = cluster }
            }
            let routed: LoopCluster
            switch route {
            case .failure(let error):
                answer(error)
                return
            case .success(let resolved):
                routed = resolved
            }
            cluster = routed
            telemetry.calledService = routed.name
            // The caller side of a service with routes (docs/routes.md): the rule the request
            // selects may abort or delay it, change it, and send it to one of its backends.
            if !settings.restoresProtocol, !loop.routes.isEmpty, let routes = loop.routes[routed.name],
                let selected = routes.select(head)
            {
                (rule, selection) = selected
            }
        }
        var faultDelay: TimeAmount?
        responseEdits = nil
        outerResponseEdits = nil
        var outer: LoopRule?
        if let selected = rule, let selection {
            // A gateway's rule picks its backend first (there is no parent service): its
            // aborts are then counted against the service the request was for.
            let early = cluster == nil ? selected.pickBackend() : nil
            if let early { telemetry.calledService = selected.rule.backends[early].service }
            guard apply(selected, selection, early: early, &head, cluster: &cluster, faultDelay: &faultDelay) else {
                return
            }
            // A gateway rule that sent the request to a whole mesh service hands it to that
            // service's own routes, as a caller's sidecar would: a rollout's split, header
            // route and mirror hold at the edge too. Both rules' header edits apply; the
            // gateway rule's timeouts and retries, when it has them, stay.
            if let early, !selected.rule.backends[early].isSubset, let service = cluster, !loop.routes.isEmpty,
                let routes = loop.routes[service.name], let (inner, innerSelection) = routes.select(head)
            {
                outer = selected
                outerResponseEdits = responseEdits
                rule = inner
                guard apply(inner, innerSelection, early: nil, &head, cluster: &cluster, faultDelay: &faultDelay)
                else { return }
            }
        }
        guard let cluster else {
            answer(.noRoute)
            return
        }
        self.cluster = cluster
        if settings.restoresProtocol {
            let admission = loop.inbound.admit(
                caller: peer,
                requireMTLS: loop.requireMTLS,
                port: { self.downstream?.localPort ?? 0 },
                method: head.method.rawValue,
                path: head.uri,
                now: requestStart.uptimeNanoseconds
            )
            switch admission {
            case .refused(let refusal):
                answer(refusal)
                return
            case .admitted(let holdsSlot):
                holdsInboundSlot = holdsSlot
            }
        } else if loop.requireMTLS, cluster.isMesh, !cluster.usesMTLS {
            answer(.mtlsRequired)
            return
        }
        if let refusal = cluster.admit() {
            cluster.metrics.countError(refusal)
            answer(refusal)
            return
        }
        admitted = true
        requestHash = cluster.hashOn.flatMap { requestHash(for: $0, head: head) }
        let timeout = Deadlines.timeout(
            meshwork: scan.meshworkTimeout,
            grpc: scan.grpcTimeout,
            routeTimeout: outer?.requestTimeout ?? rule?.requestTimeout ?? cluster.requestTimeout
        )
        routeBackoff = outer?.backoff ?? rule?.backoff
        let retrying = outer?.setsRetries == true ? outer : rule
        let plan = ExchangeStateMachine.Plan(
            retries: retrying?.retries(over: cluster.retryPolicy) ?? cluster.retryPolicy,
            idempotent: Self.idempotentMethods.contains(head.method),
            deadline: requestStart + timeout,
            propagatesDeadline: cluster.isMesh
        )
        var upstreamHead = Self.upstreamHead(
            head,
            scan: scan,
            mesh: cluster.isMesh,
            upgrade: machine.request.isUpgrade,
            restoresProtocol: settings.restoresProtocol
        )
        outer?.editRequest(&upstreamHead.headers)
        rule?.editRequest(&upstreamHead.headers)
        if let trace = telemetry.trace, let header = trace.header {
            if trace.replaces {
                upstreamHead.headers.replaceOrAdd(name: LoopTracer.parentHeader, value: header)
            } else {
                upstreamHead.headers.add(name: LoopTracer.parentHeader, value: header)
            }
            if trace.dropsState { upstreamHead.headers.remove(name: LoopTracer.stateHeader) }
        }
        if cluster.isMesh {
            let perTry = plan.retries.perTryTimeout.map { TimeAmount.nanoseconds($0.nanoseconds) }
            // A fault's delay is spent before the request leaves: the next hop gets what is
            // left after it.
            let left = max(.zero, timeout - (faultDelay ?? .zero))
            Deadlines.propagate(perTry.map { min(left, $0) } ?? left, in: &upstreamHead.headers)
        }
        if let mirroring = rule?.mirrorCluster != nil ? rule : outer, let mirrorCluster = mirroring.mirrorCluster,
            !machine.request.isUpgrade, mirroring.takesMirror(mirroring.mirror?.percent ?? 0)
        {
            // (Its deadline is replaced with its own cluster's as it leaves.)
            mirror = MirrorExchange(upstreamHead, cluster: mirrorCluster, loop: loop)
        }
        let id = machine.start(upstreamHead, plan: plan)
        armTimer(timeout, headerRead: false)
        if let faultDelay {
            // A fault's delay: the request waits here, within its deadline, before it leaves.
            inFaultDelay = true
            backoffTask = loop.loop.assumeIsolated().scheduleTask(in: faultDelay) { [weak self] in
                guard let self else { return }
                self.backoffTask = nil
                self.inFaultDelay = false
                guard self.machine.currentTry == id, let cluster = self.cluster else { return }
                self.startTry(id, cluster, avoiding: nil)
            }
            return
        }
        startTry(id, cluster, avoiding: nil)
    }

    private func requestHash(for key: HashKey, head: HTTPRequestHead) -> UInt64? {
        switch key {
        case .header(let name):
            return head.headers.first(name: name).map { StableHash.hash($0) }
        case .sourceIP:
            return downstream?.remoteAddress?.ipAddress.map { StableHash.hash($0) }
        }
    }

    /// Sends the request (again) to an endpoint the cluster picks; a retry avoids the
    /// endpoint that just failed when there is another.
    private func startTry(_ id: ExchangeStateMachine.TryID, _ cluster: LoopCluster, avoiding: Int?) {
        let acquired: LoopCluster.Acquired = { [weak self] result, endpoint in
            self?.upstreamAcquired(result, endpoint: endpoint, try: id, cluster: cluster)
        }
        if machine.request.isUpgrade {
            cluster.acquireUpgrade(hash: requestHash, acquired)
        } else {
            cluster.acquire(hash: requestHash, avoiding: avoiding, acquired)
        }
    }

    private func upstreamAcquired(
        _ result: Result<any Upstream, MeshError>,
        endpoint: Int?,
        try id: ExchangeStateMachine.TryID,
        cluster: LoopCluster
    ) {
        switch result {
        case .success(let upstream):
            guard downstream != nil, let pending = machine.upstreamAcquired(id) else {
                // The exchange ended (timeout, client gone) while we waited: give the
                // connection back untouched.
                reportLatency(upstream, cluster)
                upstream.finish()
                return
            }
            upstream.begin(delegate: self)
            self.upstream = upstream
            if let perTry = machine.perTryTimeout {
                tryTimer = loop.loop.assumeIsolated().scheduleTask(in: perTry) { [weak self] in
                    self?.tryTimedOut(id)
                }
            }
            for part in pending { upstream.write(part) }
            upstream.flush()
            if upstream.isWritable, machine.upstreamWritable() { readDownstream() }
        case .failure(let error):
            guard downstream != nil else { return }
            // (A reset here is a stream that could not be opened on a connection that just
            // died.)
            let failure: TryFailure? =
                switch error {
                case .connectFailed, .connectTimeout: .connectFailure
                case .upstreamReset: .reset
                default: nil
                }
            let outcome = machine.acquireFailed(
                id,
                error,
                failure: failure,
                avoiding: endpoint,
                now: loop.loop.now,
                budget: { takeRetryToken(cluster) }
            )
            if outcome != .stale { cluster.metrics.countError(error) }
            perform(outcome)
        }
    }

    /// The retry budget and the retries breaker give a token for one more try; the
    /// exchange holds one at a time.
    private func takeRetryToken(_ cluster: LoopCluster) -> Bool {
        guard cluster.tryRetry() else { return false }
        if holdsRetry { cluster.retryEnded() }
        holdsRetry = true
        return true
    }

    private func perform(_ failure: ExchangeStateMachine.Failure) {
        switch failure {
        case .stale: break
        case .retry(let attempt, let avoiding): backOff(attempt: attempt, avoiding: avoiding)
        case .answer(let error): answer(error)
        }
    }

    /// Waits out the cluster's backoff, then sends the request again (to another endpoint
    /// when there is one).
    private func backOff(attempt: Int, avoiding endpoint: Int?) {
        guard let cluster else { return }
        tryTimer?.cancel()
        tryTimer = nil
        let id = machine.currentTry
        let delay = routeBackoff ?? cluster.backoff(attempt: attempt)
        backoffTask = loop.loop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self else { return }
            self.backoffTask = nil
            guard let next = self.machine.backoffElapsed(id, now: self.loop.loop.now), let cluster = self.cluster
            else { return }
            self.startTry(next, cluster, avoiding: endpoint)
        }
    }

    /// Gives back what the exchange held: the breaker slots and the inbound limit's slot
    /// (with the latency sample the limit learns from). Safe to call more than once.
    private func releaseExchange() {
        backoffTask?.cancel()
        backoffTask = nil
        inFaultDelay = false
        tryTimer?.cancel()
        tryTimer = nil
        if admitted, let cluster {
            admitted = false
            if holdsRetry { cluster.retryEnded() }
            cluster.requestEnded()
        }
        holdsRetry = false
        if holdsInboundSlot {
            holdsInboundSlot = false
            let learnt = machine.responseEnded && responseStatus.code < 500
            loop.inbound.release(rtt: learnt ? .nanoseconds(elapsed()) : nil, now: loop.loop.now.uptimeNanoseconds)
        }
    }

    /// Applies one route rule to the request: its fault (an abort is answered here, a delay
    /// added to `faultDelay`), its redirect (answered here), its rewrite, its backend (into
    /// `cluster`) and its response edits. False when the request was answered.
    private func apply(
        _ selected: LoopRule,
        _ selection: RouteTable.Selection,
        early: Int?,
        _ head: inout HTTPRequestHead,
        cluster: inout LoopCluster?,
        faultDelay: inout TimeAmount?
    ) -> Bool {
        telemetry.route = selected.label
        if let fault = selected.fault {
            if fault.abortStatus != nil || fault.abortGRPCStatus != nil, selected.takesAbort(fault.abortPercent) {
                self.cluster = cluster
                answer(.faultAbort(httpStatus: fault.abortStatus, grpcStatus: fault.abortGRPCStatus))
                return false
            }
            if let delay = fault.delay, selected.takesDelay(fault.delayPercent) {
                faultDelay = (faultDelay ?? .zero) + LoopRule.amount(delay)
            }
        }
        if let location = selected.location(head, matchedPrefix: selection.matchedPrefix),
            let status = selected.redirect?.statusCode
        {
            self.cluster = cluster
            answerRedirect(HTTPResponseStatus(statusCode: status), location: location)
            return false
        }
        selected.rewrite(&head, matchedPrefix: selection.matchedPrefix)
        if let index = early ?? selected.pickBackend() {
            guard let backend = selected.backends[index] else {
                self.cluster = cluster
                answer(.noHealthyEndpoint)
                return false
            }
            cluster = backend
            // (A version subset's share is an edge of its own: a rollout analyses one rule's.)
            telemetry.backend = selected.rule.backends[index].isSubset ? backend.name : nil
        }
        responseEdits = selected.responseEdits
        return true
    }

    static let idempotentMethods: [HTTPMethod] = [.GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE]

    // MARK: backpressure

    func read(context: ChannelHandlerContext) {
        guard pipelined.isEmpty else {
            heldRead = true
            return
        }
        readRequested()
    }

    private func readRequested() {
        if machine.readRequested(upstreamWritable: upstream?.isWritable ?? true) { readDownstream() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    private func writabilityChanged() {
        if downstream?.isWritable == true, machine.isProxying { upstream?.resumeReading() }
    }

    // MARK: errors and timers

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let parserError = error as? HTTPParserError {
            answer(parserError == .headerOverflow ? .headerTooLarge : .badRequest, closing: true)
        } else {
            context.close(promise: nil)
        }
    }

    private func armTimer(_ timeout: TimeAmount, headerRead: Bool) {
        timerDeadline = loop.loop.now + timeout
        timerIsHeaderRead = headerRead
        if timerTask == nil || timerTaskDeadline > timerDeadline {
            scheduleTimerTask(at: timerDeadline)
        }
    }

    private func cancelTimer() {
        timerDeadline = .distantFuture
    }

    private func scheduleTimerTask(at deadline: NIODeadline) {
        guard downstream != nil else { return }
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
            timerFired()
        }
    }

    private func timerFired() {
        guard let downstream else { return }
        switch machine.connectionTimerFired(headerRead: timerIsHeaderRead) {
        case .none:
            break
        case .headerTimeout:
            // No request head is being answered, so the HTTP pipeline would refuse a
            // response: the 408 goes out as raw bytes below the HTTP encoder.
            settings.metrics.countError(.headerTimeout)
            if let context { sendRawAndClose(.headerTimeout, context: context) } else { downstream.close() }
        case .close:
            downstream.close()
        case .timeout(let timeout, let releasesUpstream):
            // Still in a fault's delay: the route's own timeout, never the service's.
            let error = inFaultDelay ? MeshError.faultDelayTimeout : timeout
            cluster?.metrics.countError(error)
            if releasesUpstream, let upstream, let cluster, let index = upstream.endpointIndex {
                cluster.record(index, .gatewayFailure)
            }
            answer(error)
        }
    }

    /// Gives the current try's upstream back (its latency reported first, once).
    private func letUpstreamGo() {
        guard let upstream else { return }
        self.upstream = nil
        if let cluster { reportLatency(upstream, cluster) }
        upstream.finish()
    }

    /// Answers the current request with a mesh error (`closing`: the connection closes
    /// after it, whatever the request said).
    private func answer(_ error: MeshError, closing: Bool = false) {
        settings.metrics.countError(error)
        letUpstreamGo()
        switch machine.answer(error, closing: closing) {
        case .nothing:
            return
        case .abort(let trailers, let close):
            // A failure after the response began: a gRPC call ends with the error's status
            // in its trailers (its messages so far stand, and the client learns why it
            // ended, rather than CANCELLED from a reset); anything else can only be cut off.
            releaseExchange()
            guard let downstream else { return }
            if trailers {
                downstream.write(.end(error.grpcFields(unauthenticated: false)), promise: nil)
                downstream.flush()
            }
            if close { downstream.close() }
        case .respond(let grpc, let hasBody, let close, let next):
            respond(error, grpc: grpc, hasBody: hasBody, close: close)
            releaseExchange()
            // Otherwise the exchange finishes when the request's end arrives.
            if let next { finish(next) }
        }
    }

    /// Answers the current request with a route's redirect: no body, no upstream.
    private func answerRedirect(_ status: HTTPResponseStatus, location: String) {
        letUpstreamGo()
        // (The state machine's answer depends on the exchange's state, not on the error.)
        switch machine.answer(.noRoute) {
        case .nothing:
            return
        case .abort(_, let close):
            releaseExchange()
            if close { downstream?.close() }
        case .respond(_, _, let close, let next):
            var headers = HTTPHeaders()
            headers.reserveCapacity(3)
            headers.add(name: "location", value: location)
            headers.add(name: "content-length", value: "0")
            sendLocalAnswer(
                HTTPResponseHead(version: .http1_1, status: status, headers: headers),
                body: nil,
                countedAs: status,
                close: close,
                error: nil
            )
            releaseExchange()
            if let next { finish(next) }
        }
    }

    private func respond(_ error: MeshError, grpc: Bool, hasBody: Bool, close: Bool) {
        let body = "\(error.reason)\n"
        var headers: HTTPHeaders
        let status: HTTPResponseStatus
        if grpc {
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
        // Counted as the mesh error's status, also for a gRPC answer's HTTP 200: what the
        // inbound limiter learns from.
        sendLocalAnswer(
            HTTPResponseHead(version: .http1_1, status: status, headers: headers),
            body: hasBody ? body : nil,
            countedAs: error.status,
            close: close,
            error: error
        )
    }

    /// Writes an answer the sidecar makes itself (a mesh error, a route's redirect): its
    /// head, body and end, counted and recorded as `countedAs` before it leaves, the
    /// connection closed after it when `close`.
    private func sendLocalAnswer(
        _ head: HTTPResponseHead,
        body: String?,
        countedAs status: HTTPResponseStatus,
        close: Bool,
        error: MeshError?
    ) {
        var head = head
        if close || quiescing { head.headers.add(name: "connection", value: "close") }
        responseStatus = status
        send(.head(head))
        if let body { send(.body(.byteBuffer(ByteBuffer(string: body)))) }
        let nanos = elapsed()
        settings.metrics.countRequest(status: status, nanoseconds: nanos, loop: loop.index)
        let promise: EventLoopPromise<Void>? = close ? loop.loop.makePromise() : nil
        send(.end(nil), promise: promise)
        downstream?.flush()
        if let promise {
            promise.futureResult.assumeIsolated().whenComplete { _ in self.downstream?.close() }
        }
        record(status: status, nanoseconds: nanos, error: error)
    }

    /// A refusal of a caller that presented no workload identity (UNAUTHENTICATED for gRPC).
    private func isUnauthenticated(_ error: MeshError) -> Bool {
        error == .unauthorized && settings.restoresProtocol && peer?.identity == nil
    }

    private func sendRawAndClose(_ error: MeshError, context: ChannelHandlerContext) {
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

    private func record(status: HTTPResponseStatus, nanoseconds: Int64, error: MeshError? = nil) {
        telemetry.record(
            status: status,
            nanoseconds: nanoseconds,
            error: error,
            inbound: settings.restoresProtocol,
            caller: peer,
            loop: loop
        )
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

    /// Both directions are done: give everything back, then wait for the next request on
    /// this connection, or close it.
    private func finish(_ next: ExchangeStateMachine.Next) {
        cancelTimer()
        releaseExchange()
        letUpstreamGo()
        exchangeOpen = false
        switch next {
        case .awaitRequest where quiescing:
            downstream?.close()
        case .awaitRequest:
            armTimer(settings.idleTimeout, headerRead: false)
            if !pipelined.isEmpty, let context {
                // (On the next tick: the exchange that ended may still be on the stack.)
                context.eventLoop.assumeIsolated().execute { self.takePipelined() }
            }
        case .close: downstream?.close()
        case .nothing: break
        }
    }
}

// MARK: upstream -> downstream

extension ProxyHandler: UpstreamDelegate {
    var downstreamIsWritable: Bool { downstream?.isWritable ?? false }

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        guard downstream != nil, machine.isProxying, let cluster, let upstream else { return }
        switch part {
        case .head(var head):
            let interim = head.status.code < 200 && head.status != .switchingProtocols
            // (Read only for gRPC calls: in a head it means a Trailers-Only answer.)
            let grpcStatus =
                machine.request.isGRPC ? head.headers.first(name: "grpc-status").flatMap { Int($0) } : nil
            if !interim {
                tryTimer?.cancel()
                tryTimer = nil
                if let index = upstream.endpointIndex {
                    let outcome = ExchangeStateMachine.outcomeStatus(head.status, grpcStatus: grpcStatus)
                    cluster.record(index, ExchangeOutcome(status: outcome))
                }
            }
            let action = machine.responseHead(
                head.status,
                grpcStatus: grpcStatus,
                endpoint: upstream.endpointIndex,
                now: loop.loop.now,
                budget: { takeRetryToken(cluster) }
            )
            switch action {
            case .drop:
                return
            case .forwardInterim:
                // 100 Continue, 103 Early Hints and other interim answers pass through, in
                // the caller's HTTP version.
                Self.removeHopByHop(&head.headers)
                // (Set only when it differs: the setter copies the head's storage.)
                if head.version != .http1_1 { head.version = .http1_1 }
                send(.head(head))
            case .retry(let attempt, let avoiding):
                // Not a byte of this answer has reached the client: try elsewhere.
                letUpstreamGo()
                backOff(attempt: attempt, avoiding: avoiding)
            case .fail(let error):
                // Time to the answer's head is what the balancer learns from.
                reportLatency(upstream, cluster)
                upstreamFailed(error)
            case .tunnel:
                reportLatency(upstream, cluster)
                switchToTunnel(head, upstream: upstream, cluster: cluster)
            case .forward(let close):
                reportLatency(upstream, cluster)
                responseStatus = head.status
                Self.removeHopByHop(&head.headers)
                if let responseEdits { LoopRule.apply(responseEdits, to: &head.headers) }
                if let outerResponseEdits { LoopRule.apply(outerResponseEdits, to: &head.headers) }
                if head.version != .http1_1 { head.version = .http1_1 }
                if close || quiescing { head.headers.add(name: "connection", value: "close") }
                send(.head(head))
            }
        case .body(let body):
            telemetry.responseBytes &+= body.readableBytes
            send(.body(.byteBuffer(body)))
        case .end(let trailers):
            let action = machine.responseEnd()
            guard action != .drop else { return }
            // Counted before the end leaves: a caller that has its answer finds it counted.
            let nanos = elapsed()
            settings.metrics.countRequest(status: responseStatus, nanoseconds: nanos, loop: loop.index)
            cluster.metrics.countRequest(status: responseStatus, nanoseconds: nanos, loop: loop.index)
            // Flush now: the upstream is released below and will not report its read
            // completion to us.
            send(.end(trailers))
            downstream?.flush()
            record(status: responseStatus, nanoseconds: nanos)
            upstream.endpoint?.countRequest(status: responseStatus)
            switch action {
            case .drop:
                break
            case .finish(let next):
                finish(next)
            case .finishEarly(let close):
                letUpstreamGo()
                cancelTimer()
                releaseExchange()
                if close { downstream?.close() }
            }
        }
    }

    /// Answers `101 Switching Protocols` and turns both connections into a byte tunnel.
    private func switchToTunnel(_ head: HTTPResponseHead, upstream: any Upstream, cluster: LoopCluster) {
        guard let context else { return }
        self.upstream = nil
        responseStatus = head.status
        cancelTimer()
        releaseExchange()
        context.writeAndFlush(wrapOutboundOut(.head(UpgradeTunnel.responseHead(head))), promise: nil)
        let nanos = elapsed()
        settings.metrics.countRequest(status: head.status, nanoseconds: nanos, loop: loop.index)
        cluster.metrics.countRequest(status: head.status, nanoseconds: nanos, loop: loop.index)
        record(status: head.status, nanoseconds: nanos)
        upstream.endpoint?.countRequest(status: head.status)
        UpgradeTunnel.splice(context, with: upstream)
    }

    func upstreamReadComplete() {
        downstream?.flush()
    }

    func upstreamFailed(_ error: MeshError) {
        guard downstream != nil, machine.isProxying, let cluster, let upstream else { return }
        let endpoint = upstream.endpointIndex
        let outcome = machine.upstreamFailed(
            error,
            endpoint: endpoint,
            now: loop.loop.now,
            budget: { takeRetryToken(cluster) }
        )
        guard outcome != .stale else { return }
        if let endpoint { cluster.record(endpoint, .gatewayFailure) }
        cluster.metrics.countError(error)
        if case .retry = outcome { letUpstreamGo() }
        perform(outcome)
    }

    /// The per-try timeout fired before the answer's head: the try counts as a gateway
    /// failure and is retried when allowed; otherwise the request times out.
    private func tryTimedOut(_ id: ExchangeStateMachine.TryID) {
        tryTimer = nil
        guard downstream != nil, let cluster, let upstream else { return }
        let endpoint = upstream.endpointIndex
        let outcome = machine.perTryTimedOut(
            id,
            endpoint: endpoint,
            now: loop.loop.now,
            budget: { takeRetryToken(cluster) }
        )
        guard outcome != .stale else { return }
        if let endpoint { cluster.record(endpoint, .gatewayFailure) }
        cluster.metrics.countError(.upstreamTimeout)
        letUpstreamGo()
        perform(outcome)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        guard isWritable, downstream != nil, machine.upstreamWritable() else { return }
        readDownstream()
    }
}

extension ProxyHandler {
    /// Connection-specific fields (RFC 9110 section 7.6.1, and those `Connection` names)
    /// are not forwarded. One pass finds whether there are any (usually none: the fields
    /// are left alone); a second drops them.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        var found = false
        var tokens: [String] = []
        for (name, value) in headers {
            let field = RequestHeadScan.field(name)
            guard field.isHopByHop else { continue }
            found = true
            if field == .connection { _ = RequestHeadScan.connectionTokens(in: value, into: &tokens) }
        }
        guard found else { return }
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            if RequestHeadScan.field(name).isHopByHop { continue }
            if !tokens.isEmpty, tokens.contains(name.lowercased()) { continue }
            kept.add(name: name, value: value)
        }
        headers = kept
    }

    /// The head as it goes upstream (already in origin form, its authority the Host):
    /// hop-by-hop fields out, `TE: trailers` and an upgrade kept, and the caller's HTTP
    /// version carried to the peer sidecar in `x-meshwork-proto` (or restored from it).
    static func upstreamHead(
        _ head: HTTPRequestHead,
        scan: RequestHeadScan,
        mesh: Bool,
        upgrade: Bool,
        restoresProtocol: Bool
    ) -> HTTPRequestHead {
        var out = head
        let rewritesProto = restoresProtocol || (mesh && !upgrade)
        out.headers = scan.forwardedFields(of: head.headers) { $0 == .proto && rewritesProto }
        if scan.wantsTrailers { out.headers.add(name: "te", value: "trailers") }
        if upgrade {
            out.headers.add(name: "connection", value: "upgrade")
            out.headers.add(name: "upgrade", value: scan.upgrade.joined(separator: ", "))
        }
        if restoresProtocol {
            if scan.proto == "HTTP/1.0" { out.version = .http1_0 }
        } else if mesh, !upgrade {
            out.headers.add(name: ProxyHandler.protoHeader, value: "HTTP/\(head.version.major).\(head.version.minor)")
        }
        if out.version.major == 2 { out.version = .http1_1 }
        // A body whose length is unknown travels chunked on HTTP/1.1.
        if !mesh, scan.hasTransferEncoding, scan.contentLength == nil {
            out.headers.add(name: "transfer-encoding", value: "chunked")
        }
        return out
    }

    static let protoHeader = "x-meshwork-proto"
}

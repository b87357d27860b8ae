import MeshworkTraffic
import NIOCore
import NIOHTTP1

/// The exchanges of one downstream (an HTTP/1.1 connection's requests one after another, or
/// one HTTP/2 stream's single request) as a value: `ProxyHandler` feeds it events and
/// performs the actions it returns. Every decision of the request path is made here: when to
/// read, what waits for an upstream, whether a failed try is tried again (one call of
/// `RetryPolicy.verdict` for every failure), what the mesh answers and whether the
/// connection survives it. Nothing here touches a channel, a cluster or the clock: `now`
/// comes with the events that need it.
///
/// Every try gets a `TryID`; callbacks of an earlier one (an acquisition that completes
/// after the exchange timed out, a per-try timer, a backoff) carry an older id and are
/// dropped, so a late callback cannot be taken for the next request's on a keep-alive
/// connection.
struct ExchangeStateMachine {
    typealias TryID = UInt64

    enum State: Equatable {
        /// Waiting for a request head (a new connection, or between keep-alive requests).
        case idle
        /// The head arrived; the handler checks it (size, path, route, the inbound guard)
        /// and then starts the exchange or answers it.
        case admitting
        /// An upstream is being acquired; request parts wait here (reading stops once a few
        /// body parts wait, so little is ever queued).
        case waitingForUpstream(pending: [HTTPClientRequestPart])
        /// Request and response flow through the upstream.
        case proxying
        /// A failed try waits out its backoff; request parts wait as while acquiring.
        case backingOff(pending: [HTTPClientRequestPart])
        /// The exchange has its answer (the mesh's, or an upstream's that came before the
        /// request ended); the rest of the request is discarded.
        case answered
        /// A `101` made the connection a byte tunnel: no more HTTP on it.
        case tunnel
        /// The downstream is gone.
        case closed
    }

    /// What the handler reads off a request head, for the decisions made later.
    struct Request: Equatable {
        var keepAlive = true
        var isHTTP10 = false
        var isHEAD = false
        /// `content-type: application/grpc...`: the mesh's own answers are gRPC statuses.
        var isGRPC = false
        /// An HTTP/1.1 `Upgrade` (WebSocket): after it the HTTP/1 decoder stops, so the
        /// connection becomes a tunnel or closes after the answer.
        var isUpgrade = false
        /// The request announced a body: a mesh answer given before all of it arrived
        /// closes the connection rather than read and discard an upload of unknown size.
        var hasBody = false
    }

    /// How the exchange is tried: fixed when it starts.
    struct Plan: Equatable {
        var retries: RetryPolicy
        var idempotent: Bool
        /// When the request times out.
        var deadline: NIODeadline
        /// The next hop is a sidecar: each try's head carries the time left
        /// (`x-meshwork-timeout`), which is this try's timeout when it has one.
        var propagatesDeadline: Bool
    }

    /// What follows the end of an exchange.
    enum Next: Equatable {
        /// Keep the connection for another request (arm the idle timer).
        case awaitRequest
        /// Close the downstream.
        case close
        /// Nothing: an HTTP/2 stream carries one exchange, or the connection is already
        /// closing.
        case nothing
    }

    /// What a failed try (or a timeout) leads to.
    enum Failure: Equatable {
        /// Back off, then try again (`attempt`: the retry's index from 0, for the backoff),
        /// to another endpoint than `avoiding` when there is one.
        case retry(attempt: Int, avoiding: Int?)
        /// The failure goes to the client: `answer(_:)` says how.
        case answer(MeshError)
        /// The event belongs to an earlier try or an exchange that has ended.
        case stale
    }

    /// How the mesh answers the exchange itself.
    enum Answer: Equatable {
        /// Send the mesh's answer: gRPC's Trailers-Only (HTTP 200, the status in the head)
        /// or a text one with `x-meshwork-error` (its body not for HEAD). `close`: the
        /// answer says `connection: close` and the connection closes once it is written.
        /// `next`: the exchange is over (nil: it ends when the request's end arrives).
        case respond(grpc: Bool, body: Bool, close: Bool, next: Next?)
        /// The response had begun: a gRPC call ends with the error in its trailers
        /// (`trailers`), anything else can only be cut off; `close` whether the downstream
        /// closes.
        case abort(trailers: Bool, close: Bool)
        /// Nothing can be sent: the downstream is gone or the answer is already out.
        case nothing
    }

    /// What a response head from the upstream leads to.
    enum ResponseHead: Equatable {
        /// Not for this exchange (an earlier try's, or the exchange has ended), or an
        /// interim answer an HTTP/1.0 client must not see (RFC 9110 15.2).
        case drop
        /// An interim answer (100 Continue, 103 Early Hints) passes through.
        case forwardInterim
        /// A 5xx the retry policy tries again: not a byte of it reaches the client.
        case retry(attempt: Int, avoiding: Int?)
        /// `101 Switching Protocols` to an upgrade request: both connections become a tunnel.
        case tunnel
        /// The response begins: forward the head, with `connection: close` when `close`.
        case forward(close: Bool)
        /// A head that cannot be honoured (a `101` nobody asked for).
        case fail(MeshError)
    }

    /// What the end of the upstream's response leads to.
    enum ResponseEnd: Equatable {
        case drop
        /// Forward the end; the exchange is over.
        case finish(Next)
        /// Forward the end; the upstream answered before the request finished (an early 413,
        /// say): the rest of the request cannot be resynchronised, so the downstream closes
        /// (an HTTP/2 stream is reset by its connection) and the upstream is let go.
        case finishEarly(close: Bool)
    }

    /// What a request part leads to.
    enum RequestPart: Equatable {
        case none
        /// Write it to the upstream.
        case forward
        /// The request has ended after the mesh's answer: the exchange is over.
        case finished(Next)
    }

    /// What the connection timer (header read, idle, or the request's deadline) leads to.
    enum Timer: Equatable {
        case none
        /// A client too slow to send its head: 408, written below the HTTP encoder (no head
        /// is being answered), then close.
        case headerTimeout
        /// An idle keep-alive connection: close it.
        case close
        /// The request's deadline passed: the exchange fails with this (`releasesUpstream`:
        /// an upstream was in use and counts a gateway failure).
        case timeout(MeshError, releasesUpstream: Bool)
    }

    /// Request parts held while the upstream is acquired before reading stops.
    static let maxPendingParts = 16
    /// Request bodies up to this size are kept so the request can be sent again.
    static let maxReplayBytes = 64 * 1024

    /// HTTP/2 streams carry one exchange each and have no connection timers.
    let isStream: Bool
    private(set) var state = State.idle
    private(set) var request = Request()
    private(set) var requestEnded = false
    private(set) var responseStarted = false
    private(set) var responseEnded = false
    /// A read was asked for while the upstream could not take more: it is made when it can.
    private(set) var pendingRead = false
    private(set) var plan: Plan?
    /// Retries made so far.
    private(set) var attempt = 0
    private(set) var currentTry: TryID = 0
    /// The request parts seen so far, kept while the request is small enough to send again
    /// and no byte of an answer has reached the caller; nil when it cannot be retried once
    /// sent. Body parts after the first are copied into one buffer: kept by reference, each
    /// small part (a gRPC message, a DATA frame) would pin the whole read buffer it was cut
    /// from, and 64 KiB of 69-byte messages pinned ~15 KiB each (a bidirectional stream
    /// through the pair grew the server sidecar by 350 MiB in 8 s).
    private(set) var replay: [HTTPClientRequestPart]?
    private var replayBytes = 0

    init(isStream: Bool) {
        self.isStream = isStream
    }

    var keepAlive: Bool { request.keepAlive }
    var isProxying: Bool { state == .proxying }

    // MARK: the request

    /// A request head arrived: a new exchange begins.
    mutating func requestHead(_ request: Request) {
        self.request = request
        // After an upgrade request the decoder stops parsing: nothing else comes on it.
        if request.isUpgrade { self.request.keepAlive = false }
        requestEnded = false
        responseStarted = false
        responseEnded = false
        plan = nil
        attempt = 0
        replay = nil
        replayBytes = 0
        state = .admitting
    }

    /// The head passed every check: acquire an upstream for `head` (the head as it goes
    /// upstream) and return the first try's id.
    mutating func start(_ head: HTTPRequestHead, plan: Plan) -> TryID {
        precondition(state == .admitting, "an exchange starts from its head")
        self.plan = plan
        // One buffer for both, with room for the request's end: the pending parts are
        // handed over (and dropped) when the upstream is there, usually at once from the
        // pool, so the replay then appends in place. (Two arrays and a regrowth were 3 of
        // the ~19 allocations of a keep-alive request.)
        var parts: [HTTPClientRequestPart] = []
        parts.reserveCapacity(2)
        parts.append(.head(head))
        replay = plan.retries.attempts > 0 && !request.isUpgrade ? parts : nil
        state = .waitingForUpstream(pending: parts)
        currentTry &+= 1
        return currentTry
    }

    /// A body part or the end of the request arrived.
    mutating func requestPart(_ part: HTTPClientRequestPart) -> RequestPart {
        if case .end = part { requestEnded = true }
        if replay != nil {
            if case .body(.byteBuffer(let buffer)) = part {
                replayBytes += buffer.readableBytes
                if replayBytes > Self.maxReplayBytes {
                    replay = nil
                } else if case .body(.byteBuffer(var body)) = replay!.last {
                    // Out of the array first, so the write below copies (compacts) a
                    // shared slice once and appends in place from then on.
                    replay!.removeLast()
                    body.writeImmutableBuffer(buffer)
                    replay!.append(.body(.byteBuffer(body)))
                } else {
                    replay!.append(part)
                }
            } else {
                replay!.append(part)
            }
        }
        switch state {
        case .waitingForUpstream(var pending):
            // (The state lets go of the array first, so the append does not copy it.)
            state = .closed
            pending.append(part)
            state = .waitingForUpstream(pending: pending)
            return .none
        case .backingOff(var pending):
            state = .closed
            pending.append(part)
            state = .backingOff(pending: pending)
            return .none
        case .proxying:
            return .forward
        case .answered:
            guard requestEnded, responseEnded else { return .none }
            return .finished(finishExchange())
        case .idle, .admitting, .tunnel, .closed:
            return .none
        }
    }

    // MARK: backpressure

    /// The downstream's reader wants more: read now (true), or once the upstream can take
    /// it (`upstreamWritable`).
    mutating func readRequested(upstreamWritable: Bool) -> Bool {
        switch state {
        case .waitingForUpstream(let pending) where !requestEnded && pending.count >= Self.maxPendingParts,
            .backingOff(let pending) where !requestEnded && pending.count >= Self.maxPendingParts:
            // Bound what waits; a request that has ended reads on (the next pipelined
            // request is held by the HTTP pipeline handler).
            pendingRead = true
            return false
        case .proxying where !upstreamWritable:
            pendingRead = true
            return false
        default:
            return true
        }
    }

    /// The upstream can take request bytes again: read now when a read waits.
    mutating func upstreamWritable() -> Bool {
        guard pendingRead, state != .closed else { return false }
        pendingRead = false
        return true
    }

    // MARK: tries

    /// The upstream of try `id` is here: write the parts that waited (`nil`: the try is
    /// stale, give the connection back untouched).
    mutating func upstreamAcquired(_ id: TryID) -> [HTTPClientRequestPart]? {
        guard id == currentTry, case .waitingForUpstream(let pending) = state else { return nil }
        state = .proxying
        return pending
    }

    /// No upstream for try `id`. `failure` is the error as a try failure when it is one
    /// (nothing was sent: every part is still here, whatever the request's size).
    mutating func acquireFailed(
        _ id: TryID,
        _ error: MeshError,
        failure: TryFailure?,
        avoiding endpoint: Int?,
        now: NIODeadline,
        budget: () -> Bool
    ) -> Failure {
        guard id == currentTry, case .waitingForUpstream(let pending) = state else { return .stale }
        if let failure, verdict(failure, sent: false, now: now, budget: budget) == .retry {
            return .retry(attempt: backOff(pending), avoiding: endpoint)
        }
        return .answer(error)
    }

    /// The upstream failed (a reset, a closed connection) before or during the response.
    mutating func upstreamFailed(_ error: MeshError, endpoint: Int?, now: NIODeadline, budget: () -> Bool) -> Failure {
        guard state == .proxying else { return .stale }
        if error == .upstreamReset, verdict(.reset, sent: true, now: now, budget: budget) == .retry,
            let parts = replay
        {
            return .retry(attempt: backOff(parts), avoiding: endpoint)
        }
        return .answer(error)
    }

    /// Try `id`'s own timeout (`perTryTimeout`) passed before the answer's head: a gateway
    /// failure, tried again when allowed; otherwise the request times out.
    mutating func perTryTimedOut(_ id: TryID, endpoint: Int?, now: NIODeadline, budget: () -> Bool) -> Failure {
        guard id == currentTry, state == .proxying, !responseStarted else { return .stale }
        if verdict(.perTryTimeout, sent: true, now: now, budget: budget) == .retry, let parts = replay {
            return .retry(attempt: backOff(parts), avoiding: endpoint)
        }
        request.keepAlive = false
        return .answer(.upstreamTimeout)
    }

    /// The backoff of try `id` is over: the next try's id and its parts, with the head's
    /// deadline rewritten to the time now left (nil: stale).
    mutating func backoffElapsed(_ id: TryID, now: NIODeadline) -> TryID? {
        guard id == currentTry, case .backingOff(var pending) = state, let plan else { return nil }
        if plan.propagatesDeadline, case .head(var head) = pending.first {
            Deadlines.propagate(tryTimeout(left: plan.deadline - now), in: &head.headers)
            pending[0] = .head(head)
        }
        state = .waitingForUpstream(pending: pending)
        currentTry &+= 1
        return currentTry
    }

    /// The time the next hop gets for a try: what is left of the request's, or less when
    /// each try has its own timeout (the hop then gives up when this try does).
    func tryTimeout(left: TimeAmount) -> TimeAmount {
        guard let perTry = plan?.retries.perTryTimeout else { return left }
        return min(left, .nanoseconds(perTry.nanoseconds))
    }

    /// This try's own timeout, when the policy sets one.
    var perTryTimeout: TimeAmount? {
        plan?.retries.perTryTimeout.map { .nanoseconds($0.nanoseconds) }
    }

    /// Waits with `parts` for the next try; returns the retry's index (for its backoff).
    private mutating func backOff(_ parts: [HTTPClientRequestPart]) -> Int {
        attempt += 1
        state = .backingOff(pending: parts)
        return attempt - 1
    }

    private func verdict(_ failure: TryFailure, sent: Bool, now: NIODeadline, budget: () -> Bool) -> RetryVerdict {
        guard let plan else { return .fail(.attemptsSpent) }
        let context = TryContext(
            idempotent: plan.idempotent,
            requestSent: sent,
            responseStarted: responseStarted,
            // Unsent, every part is still pending; sent, only what `replay` kept.
            replayable: !sent || replay != nil,
            attempt: attempt,
            timeLeft: .nanoseconds((plan.deadline - now).nanoseconds)
        )
        return plan.retries.verdict(after: failure, context, budget: budget)
    }

    // MARK: the response

    /// A response head from the upstream (`endpoint`: the try's endpoint when the balancer
    /// tracks it; only then is a 5xx retried).
    ///
    /// `grpcStatus`: the head's `grpc-status`, for a gRPC call. A Trailers-Only answer with
    /// UNAVAILABLE (what a peer sidecar answers when it cannot reach its app, sheds load
    /// or is not ready, and what gRPC itself calls safe to retry) is a failed try like a
    /// 503: HTTP 200 would otherwise hide it from every retry and from outlier detection.
    mutating func responseHead(
        _ status: HTTPResponseStatus,
        grpcStatus: Int? = nil,
        endpoint: Int?,
        now: NIODeadline,
        budget: () -> Bool
    ) -> ResponseHead {
        guard state == .proxying else { return .drop }
        if status.code < 200, status != .switchingProtocols {
            return request.isHTTP10 ? .drop : .forwardInterim
        }
        let failure = Self.outcomeStatus(status, grpcStatus: request.isGRPC ? grpcStatus : nil)
        if failure >= 500, let endpoint,
            verdict(.status(failure), sent: true, now: now, budget: budget) == .retry,
            let parts = replay
        {
            return .retry(attempt: backOff(parts), avoiding: endpoint)
        }
        if status == .switchingProtocols {
            guard request.isUpgrade, !isStream else { return .fail(.protocolError) }
            responseStarted = true
            responseEnded = true
            state = .tunnel
            return .tunnel
        }
        responseStarted = true
        // Nothing is tried again once the answer has begun: let go of the parts kept.
        replay = nil
        replayBytes = 0
        return .forward(close: !request.keepAlive && !isStream)
    }

    /// The status a response counts as for retries and outlier detection: its own, or 503
    /// for a gRPC Trailers-Only UNAVAILABLE.
    static func outcomeStatus(_ status: HTTPResponseStatus, grpcStatus: Int?) -> Int {
        grpcStatus == GRPCStatus.unavailable ? 503 : Int(status.code)
    }

    /// The upstream's response ended.
    mutating func responseEnd() -> ResponseEnd {
        guard state == .proxying else { return .drop }
        responseEnded = true
        guard requestEnded else {
            state = .answered
            request.keepAlive = false
            return .finishEarly(close: !isStream)
        }
        return .finish(finishExchange())
    }

    // MARK: the mesh's own answers

    /// The mesh answers the exchange with an error (a refusal, a failure that is not tried
    /// again, a timeout, a malformed request). `closing`: the connection closes after the
    /// answer whatever the request said (a request that could not be parsed).
    mutating func answer(_ error: MeshError, closing: Bool = false) -> Answer {
        switch state {
        case .closed, .tunnel:
            return .nothing
        case .answered:
            // Already answered: a connection that cannot be parsed any more is cut off.
            return closing && !isStream ? .abort(trailers: false, close: true) : .nothing
        case .idle, .admitting, .waitingForUpstream, .backingOff, .proxying:
            break
        }
        if closing { request.keepAlive = false }
        state = .answered
        replay = nil
        if responseStarted {
            guard request.isGRPC, !responseEnded else { return .abort(trailers: false, close: true) }
            responseEnded = true
            // An HTTP/1.1 connection whose request may not have ended cannot be reused.
            return .abort(trailers: true, close: !isStream)
        }
        if !requestEnded, request.hasBody { request.keepAlive = false }
        responseStarted = true
        responseEnded = true
        let close = !request.keepAlive && !isStream
        var next: Next?
        if requestEnded || close { next = finishExchange(closing: close) }
        return .respond(grpc: request.isGRPC, body: !request.isHEAD && !request.isGRPC, close: close, next: next)
    }

    /// The connection timer fired; `headerRead` when it was the header read timeout.
    mutating func connectionTimerFired(headerRead: Bool) -> Timer {
        switch state {
        case .idle:
            guard headerRead, !isStream else { return .close }
            state = .answered
            return .headerTimeout
        case .admitting, .waitingForUpstream, .backingOff, .proxying:
            let releases = state == .proxying
            request.keepAlive = false
            return .timeout(.upstreamTimeout, releasesUpstream: releases)
        case .answered, .tunnel, .closed:
            return .none
        }
    }

    /// The downstream closed (the connection, or the stream was reset, or it ended with
    /// its response): every later event is stale. (Whatever upstream the handler still
    /// holds it lets go.)
    mutating func downstreamClosed() {
        state = .closed
        responseEnded = true
        pendingRead = false
    }

    /// Both directions are done: ready for the next request on this connection.
    private mutating func finishExchange(closing: Bool = false) -> Next {
        state = .idle
        plan = nil
        replay = nil
        if isStream || closing { return .nothing }
        return request.keepAlive ? .awaitRequest : .close
    }
}

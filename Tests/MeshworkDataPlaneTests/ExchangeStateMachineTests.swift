import MeshworkTraffic
import NIOCore
import NIOHTTP1
import Testing

@testable import MeshworkDataPlane

/// The request path's decisions as a value: events in, actions compared (the model is
/// async-http-client's `HTTP1ConnectionStateMachineTests`). No channel, no clock: `now`
/// is a deadline the test picks.
@Suite("Exchange state machine")
struct ExchangeStateMachineTests {
    typealias Machine = ExchangeStateMachine

    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")

    static func plan(
        attempts: Int = 2,
        on: Set<RetryCondition> = [.connectFailure, .reset, .perTryTimeout, .unavailable, .idempotent5xx],
        perTry: Duration? = nil,
        nonIdempotent: Bool = false,
        idempotent: Bool = true,
        timeout: TimeAmount = .seconds(10),
        mesh: Bool = false
    ) -> Machine.Plan {
        var retries = RetryPolicy()
        retries.attempts = attempts
        retries.on = on
        retries.perTryTimeout = perTry
        retries.nonIdempotent = nonIdempotent
        return Machine.Plan(
            retries: retries,
            idempotent: idempotent,
            deadline: start + timeout,
            propagatesDeadline: mesh
        )
    }

    /// A machine with one request started: its head is in, and the first try's id.
    static func started(
        _ request: Machine.Request = Machine.Request(),
        plan: Machine.Plan = plan(),
        stream: Bool = false,
        head: HTTPRequestHead = head
    ) -> (Machine, Machine.TryID) {
        var machine = Machine(isStream: stream)
        machine.requestHead(request)
        let id = machine.start(head, plan: plan)
        return (machine, id)
    }

    static let body = HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: "x")))

    // MARK: the plain exchange

    @Test func aKeepAliveExchangeForwardsWhatWaitedAndAwaitsTheNextRequest() {
        var (machine, id) = Self.started()
        let part1 = machine.requestPart(Self.body)
        #expect(part1 == .none)
        let part2 = machine.requestPart(.end(nil))
        #expect(part2 == .none)
        let parts = machine.upstreamAcquired(id)
        #expect(parts == [.head(Self.head), Self.body, .end(nil)])
        #expect(machine.isProxying)
        let head = machine.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        #expect(head == .forward(close: false))
        let end = machine.responseEnd()
        #expect(end == .finish(.awaitRequest))
        #expect(machine.state == .idle)
    }

    @Test func partsAfterTheAcquisitionAreForwardedAsTheyCome() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        let part1 = machine.requestPart(Self.body)
        #expect(part1 == .forward)
        let part2 = machine.requestPart(.end(nil))
        #expect(part2 == .forward)
    }

    @Test func aConnectionCloseRequestClosesAfterItsResponse() {
        var (machine, id) = Self.started(Machine.Request(keepAlive: false))
        _ = machine.requestPart(.end(nil))
        _ = machine.upstreamAcquired(id)
        let head = machine.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        #expect(head == .forward(close: true))
        let end = machine.responseEnd()
        #expect(end == .finish(.close))
    }

    @Test func aStreamCarriesOneExchangeAndNeverSaysClose() {
        var (machine, id) = Self.started(Machine.Request(keepAlive: false), stream: true)
        _ = machine.requestPart(.end(nil))
        _ = machine.upstreamAcquired(id)
        let head = machine.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        #expect(head == .forward(close: false))
        let end = machine.responseEnd()
        #expect(end == .finish(.nothing))
    }

    @Test func anUpstreamThatAnswersBeforeTheRequestEndsEndsTheConnection() {
        var (machine, id) = Self.started(Machine.Request(hasBody: true))
        _ = machine.upstreamAcquired(id)
        _ = machine.responseHead(.payloadTooLarge, endpoint: 0, now: Self.start, budget: { true })
        let end = machine.responseEnd()
        #expect(end == .finishEarly(close: true))
        #expect(!machine.keepAlive)
        // The rest of the request is discarded.
        let part = machine.requestPart(Self.body)
        #expect(part == .none)
    }

    @Test func anEarlyAnswerOnAStreamFinishesWhenTheRequestEnds() {
        var (machine, id) = Self.started(Machine.Request(hasBody: true), stream: true)
        _ = machine.upstreamAcquired(id)
        _ = machine.responseHead(.payloadTooLarge, endpoint: 0, now: Self.start, budget: { true })
        let end = machine.responseEnd()
        #expect(end == .finishEarly(close: false))
        let part = machine.requestPart(.end(nil))
        #expect(part == .finished(.nothing))
    }

    // MARK: backpressure

    @Test func readingStopsOnceEnoughPartsWaitForTheUpstreamAndResumesWhenItCanTakeThem() {
        var (machine, id) = Self.started()
        for _ in 1..<Machine.maxPendingParts { _ = machine.requestPart(Self.body) }
        let reads = machine.readRequested(upstreamWritable: true)
        #expect(reads == false)
        #expect(machine.pendingRead)
        let parts = machine.upstreamAcquired(id)?.count
        #expect(parts == Machine.maxPendingParts)
        let resumes1 = machine.upstreamWritable()
        #expect(resumes1)
        // Once: the read was made.
        let resumes2 = machine.upstreamWritable()
        #expect(!resumes2)
    }

    @Test func aRequestThatEndedReadsOnWhileItsPartsWait() {
        var (machine, _) = Self.started()
        for _ in 1..<Machine.maxPendingParts { _ = machine.requestPart(Self.body) }
        _ = machine.requestPart(.end(nil))
        let reads = machine.readRequested(upstreamWritable: true)
        #expect(reads)
    }

    @Test func anUpstreamThatCannotTakeMoreHoldsTheRead() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        let reads1 = machine.readRequested(upstreamWritable: false)
        #expect(reads1 == false)
        let reads2 = machine.readRequested(upstreamWritable: true)
        #expect(reads2)
        let resumes = machine.upstreamWritable()
        #expect(resumes)
    }

    // MARK: tries and the retry verdict

    @Test func aFailedConnectionIsTriedAgainAfterABackoffWithANewTry() {
        var (machine, first) = Self.started()
        _ = machine.requestPart(.end(nil))
        let failure = machine.acquireFailed(
            first,
            .connectFailed,
            failure: .connectFailure,
            avoiding: 3,
            now: Self.start,
            budget: { true }
        )
        #expect(failure == .retry(attempt: 0, avoiding: 3))
        #expect(machine.state == .backingOff(pending: [.head(Self.head), .end(nil)]))
        // A late callback of the first try is dropped.
        let nextTry = machine.backoffElapsed(first &+ 7, now: Self.start)
        #expect(nextTry == nil)
        let second = machine.backoffElapsed(first, now: Self.start)
        #expect(second == first &+ 1)
        let parts1 = machine.upstreamAcquired(first)
        #expect(parts1 == nil)
        let parts2 = machine.upstreamAcquired(second!)
        #expect(parts2 == [.head(Self.head), .end(nil)])
    }

    @Test func theSecondRetryHasTheNextAttemptIndexUntilAttemptsAreSpent() {
        var (machine, id) = Self.started(plan: Self.plan(attempts: 2))
        var attempts: [Machine.Failure] = []
        for _ in 0..<3 {
            attempts.append(
                machine.acquireFailed(id, .connectFailed, failure: .connectFailure, avoiding: nil, now: Self.start) {
                    true
                }
            )
            if let next = machine.backoffElapsed(id, now: Self.start) { id = next }
        }
        #expect(
            attempts == [
                .retry(attempt: 0, avoiding: nil), .retry(attempt: 1, avoiding: nil), .answer(.connectFailed),
            ]
        )
    }

    @Test func aStaleAcquisitionFailureChangesNothing() {
        var (machine, id) = Self.started()
        let failure = machine.acquireFailed(
            id &+ 1,
            .connectFailed,
            failure: .connectFailure,
            avoiding: nil,
            now: Self.start
        ) {
            true
        }
        #expect(failure == .stale)
        #expect(machine.state == .waitingForUpstream(pending: [.head(Self.head)]))
    }

    @Test func a503IsTriedAgainWithTheKeptRequestAndNotAByteReachesTheClient() {
        var (machine, id) = Self.started()
        _ = machine.requestPart(Self.body)
        _ = machine.requestPart(.end(nil))
        _ = machine.upstreamAcquired(id)
        let action = machine.responseHead(.serviceUnavailable, endpoint: 2, now: Self.start, budget: { true })
        #expect(action == .retry(attempt: 0, avoiding: 2))
        #expect(!machine.responseStarted)
        #expect(machine.state == .backingOff(pending: [.head(Self.head), Self.body, .end(nil)]))
    }

    @Test func aGRPCTrailersOnlyUnavailableIsTriedAgainLikeA503() {
        let call = HTTPRequestHead(version: .http2, method: .POST, uri: "/pkg.Service/Method")
        var (machine, id) = Self.started(Machine.Request(isGRPC: true), plan: Self.plan(idempotent: false), head: call)
        _ = machine.upstreamAcquired(id)
        let retried = machine.responseHead(.ok, grpcStatus: 14, endpoint: 1, now: Self.start, budget: { true })
        #expect(retried == .retry(attempt: 0, avoiding: 1))
        // Any other status is the call's answer, and so is a grpc-status on a call that is
        // not gRPC.
        var (other, otherID) = Self.started(
            Machine.Request(isGRPC: true),
            plan: Self.plan(idempotent: false),
            head: call
        )
        _ = other.upstreamAcquired(otherID)
        let answered = other.responseHead(.ok, grpcStatus: 13, endpoint: 1, now: Self.start, budget: { true })
        #expect(answered == .forward(close: false))
        var (plain, plainID) = Self.started()
        _ = plain.upstreamAcquired(plainID)
        let plainAnswer = plain.responseHead(.ok, grpcStatus: 14, endpoint: 1, now: Self.start, budget: { true })
        #expect(plainAnswer == .forward(close: false))
    }

    @Test func aStatusFromAnUntrackedEndpointIsNotRetried() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        let head = machine.responseHead(.serviceUnavailable, endpoint: nil, now: Self.start, budget: { true })
        #expect(head == .forward(close: false))
    }

    @Test func aSentPostThatIsResetGoesToTheClientUnlessThePolicySaysItsCallsRepeat() {
        let post = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")
        var (machine, id) = Self.started(plan: Self.plan(idempotent: false), head: post)
        _ = machine.upstreamAcquired(id)
        let failure1 = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { true })
        #expect(failure1 == .answer(.upstreamReset))

        var (repeating, second) = Self.started(plan: Self.plan(nonIdempotent: true, idempotent: false), head: post)
        _ = repeating.upstreamAcquired(second)
        let failure2 = repeating.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { true })
        #expect(failure2 == .retry(attempt: 0, avoiding: 1))
    }

    @Test func aSentBodyTooLargeToKeepIsNotReplayed() {
        var (machine, id) = Self.started()
        let big = HTTPClientRequestPart.body(
            .byteBuffer(ByteBuffer(repeating: 0x61, count: Machine.maxReplayBytes + 1))
        )
        _ = machine.upstreamAcquired(id)
        _ = machine.requestPart(big)
        #expect(machine.replay == nil)
        let failure = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { true })
        #expect(failure == .answer(.upstreamReset))
    }

    /// Small body parts cut from one large read buffer are kept as one compact copy, so
    /// the replay does not pin the buffers they came from; replayed, the bytes are the same.
    @Test func keptBodyPartsAreCopiedIntoOneBufferThatPinsNoReadBuffer() {
        var (machine, id) = Self.started(plan: Self.plan(nonIdempotent: true, idempotent: false))
        _ = machine.upstreamAcquired(id)
        let read = ByteBuffer(repeating: 0x61, count: 16 * 1024)
        for index in 0..<3 {
            _ = machine.requestPart(.body(.byteBuffer(read.getSlice(at: index * 10, length: 10)!)))
        }
        _ = machine.requestPart(.end(nil))
        guard let replay = machine.replay, replay.count == 3, case .body(.byteBuffer(let body)) = replay[1] else {
            Issue.record("expected head, one body and end: \(String(describing: machine.replay))")
            return
        }
        #expect(body.readableBytes == 30)
        // A copy of its own, not a view into the 16 KiB read buffer.
        let readRange = read.withUnsafeReadableBytes {
            UInt(bitPattern: $0.baseAddress!)..<UInt(bitPattern: $0.baseAddress! + $0.count)
        }
        let kept = body.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
        #expect(!readRange.contains(kept))
        #expect(
            machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { true })
                == .retry(attempt: 0, avoiding: 1)
        )
    }

    /// Once the answer has begun nothing is tried again, so nothing of the request is kept:
    /// a bidirectional stream's messages are not held for its whole life.
    @Test func nothingIsKeptForReplayOnceTheAnswerHasBegun() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        _ = machine.requestPart(Self.body)
        #expect(machine.replay != nil)
        #expect(machine.responseHead(.ok, endpoint: 1, now: Self.start, budget: { true }) == .forward(close: false))
        #expect(machine.replay == nil)
        _ = machine.requestPart(Self.body)
        #expect(machine.replay == nil)
    }

    @Test func aRefusalForAnyOtherReasonNeverSpendsABudgetToken() {
        var asked = 0
        var (machine, id) = Self.started(plan: Self.plan(attempts: 0))
        _ = machine.upstreamAcquired(id)
        _ = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start) {
            asked += 1
            return true
        }
        #expect(asked == 0)
    }

    @Test func aSpentBudgetSendsTheFailureToTheClient() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        let failure = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { false })
        #expect(failure == .answer(.upstreamReset))
    }

    @Test func noRetryOnceTheDeadlineHasPassed() {
        var (machine, id) = Self.started(plan: Self.plan(timeout: .seconds(1)))
        _ = machine.upstreamAcquired(id)
        let late = Self.start + .seconds(2)
        let failure = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: late, budget: { true })
        #expect(failure == .answer(.upstreamReset))
    }

    @Test func aFailureOnceTheResponseStartedIsNeverRetried() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        _ = machine.responseHead(.ok, endpoint: 1, now: Self.start, budget: { true })
        let failure = machine.upstreamFailed(.upstreamReset, endpoint: 1, now: Self.start, budget: { true })
        #expect(failure == .answer(.upstreamReset))
        let answer = machine.answer(.upstreamReset)
        #expect(answer == .abort(trailers: false, close: true))
    }

    @Test func aPerTryTimeoutIsRetriedAndTheRetryCarriesTheTimeLeft() {
        var (machine, id) = Self.started(plan: Self.plan(perTry: .milliseconds(300), timeout: .seconds(1), mesh: true))
        _ = machine.upstreamAcquired(id)
        #expect(machine.perTryTimeout == .milliseconds(300))
        let failure = machine.perTryTimedOut(id, endpoint: 0, now: Self.start + .milliseconds(300)) { true }
        #expect(failure == .retry(attempt: 0, avoiding: 0))
        // 700 ms are left, but this try's own timeout (300 ms) is less: the next hop gets it.
        let next = machine.backoffElapsed(id, now: Self.start + .milliseconds(300))!
        guard case .head(let retried) = machine.upstreamAcquired(next)?.first else {
            Issue.record("no head")
            return
        }
        #expect(retried.headers.first(name: Deadlines.header) == "300")

        var (late, lateID) = Self.started(plan: Self.plan(perTry: .seconds(5), timeout: .seconds(1), mesh: true))
        _ = late.upstreamAcquired(lateID)
        _ = late.upstreamFailed(.upstreamReset, endpoint: 0, now: Self.start + .milliseconds(600)) { true }
        lateID = late.backoffElapsed(lateID, now: Self.start + .milliseconds(600))!
        guard case .head(let leftHead) = late.upstreamAcquired(lateID)?.first else {
            Issue.record("no head")
            return
        }
        #expect(leftHead.headers.first(name: Deadlines.header) == "400")
    }

    @Test func aPerTryTimeoutWithNoRetryLeftTimesTheRequestOutAndClosesTheConnection() {
        var (machine, id) = Self.started(plan: Self.plan(attempts: 0, perTry: .milliseconds(100)))
        _ = machine.upstreamAcquired(id)
        let failure = machine.perTryTimedOut(id, endpoint: 0, now: Self.start) { true }
        #expect(failure == .answer(.upstreamTimeout))
        #expect(!machine.keepAlive)
    }

    @Test func aPerTryTimerOfAnEarlierRequestIsStaleOnTheNext() {
        var (machine, first) = Self.started(plan: Self.plan(perTry: .milliseconds(100)))
        _ = machine.requestPart(.end(nil))
        _ = machine.upstreamAcquired(first)
        _ = machine.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        let end = machine.responseEnd()
        #expect(end == .finish(.awaitRequest))
        machine.requestHead(Machine.Request())
        let second = machine.start(Self.head, plan: Self.plan(perTry: .milliseconds(100)))
        _ = machine.upstreamAcquired(second)
        let failure = machine.perTryTimedOut(first, endpoint: 0, now: Self.start) { true }
        #expect(failure == .stale)
        #expect(machine.isProxying)
    }

    // MARK: the response's kinds

    @Test func interimAnswersPassExceptToHTTP10Clients() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        let head1 = machine.responseHead(.continue, endpoint: 0, now: Self.start, budget: { true })
        #expect(head1 == .forwardInterim)
        #expect(!machine.responseStarted)
        var (old, oldID) = Self.started(Machine.Request(isHTTP10: true))
        _ = old.upstreamAcquired(oldID)
        let head2 = old.responseHead(.continue, endpoint: 0, now: Self.start, budget: { true })
        #expect(head2 == .drop)
    }

    @Test func a101ToAnUpgradeMakesATunnelAndOneNobodyAskedForFails() {
        var (machine, id) = Self.started(Machine.Request(isUpgrade: true))
        #expect(!machine.keepAlive)
        #expect(machine.replay == nil)
        _ = machine.upstreamAcquired(id)
        let head1 = machine.responseHead(.switchingProtocols, endpoint: 0, now: Self.start, budget: { true })
        #expect(head1 == .tunnel)
        #expect(machine.state == .tunnel)
        var (plain, plainID) = Self.started()
        _ = plain.upstreamAcquired(plainID)
        let head2 = plain.responseHead(.switchingProtocols, endpoint: 0, now: Self.start, budget: { true })
        #expect(head2 == .fail(.protocolError))
        #expect(plain.isProxying)
    }

    // MARK: the mesh's own answers

    @Test func anAnswerBeforeTheRequestEndsWaitsForItsEndOnAKeepAliveConnection() {
        var machine = Machine(isStream: false)
        machine.requestHead(Machine.Request())
        let answer = machine.answer(.noRoute)
        #expect(answer == .respond(grpc: false, body: true, close: false, next: nil))
        let part = machine.requestPart(.end(nil))
        #expect(part == .finished(.awaitRequest))
    }

    @Test func anAnswerBeforeAnAnnouncedBodyClosesTheConnection() {
        var machine = Machine(isStream: false)
        machine.requestHead(Machine.Request(hasBody: true))
        let answer1 = machine.answer(.unauthorized)
        #expect(answer1 == .respond(grpc: false, body: true, close: true, next: .nothing))
        var stream = Machine(isStream: true)
        stream.requestHead(Machine.Request(hasBody: true))
        let answer2 = stream.answer(.unauthorized)
        #expect(answer2 == .respond(grpc: false, body: true, close: false, next: nil))
        let part = stream.requestPart(.end(nil))
        #expect(part == .finished(.nothing))
    }

    @Test func gRPCAndHEADAnswersCarryNoBody() {
        var grpc = Machine(isStream: true)
        grpc.requestHead(Machine.Request(isGRPC: true))
        _ = grpc.requestPart(.end(nil))
        let answer1 = grpc.answer(.noHealthyEndpoint)
        #expect(answer1 == .respond(grpc: true, body: false, close: false, next: .nothing))
        var head = Machine(isStream: false)
        head.requestHead(Machine.Request(isHEAD: true))
        _ = head.requestPart(.end(nil))
        let answer2 = head.answer(.noRoute)
        #expect(answer2 == .respond(grpc: false, body: false, close: false, next: .awaitRequest))
    }

    @Test func aFailureAfterAGRPCResponseBeganEndsItWithTrailers() {
        var (stream, id) = Self.started(Machine.Request(isGRPC: true), stream: true)
        _ = stream.upstreamAcquired(id)
        _ = stream.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        let answer1 = stream.answer(.upstreamReset)
        #expect(answer1 == .abort(trailers: true, close: false))
        let answer2 = stream.answer(.upstreamReset)
        #expect(answer2 == .nothing)
        var (connection, connectionID) = Self.started(Machine.Request(isGRPC: true))
        _ = connection.upstreamAcquired(connectionID)
        _ = connection.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        let answer3 = connection.answer(.upstreamReset)
        #expect(answer3 == .abort(trailers: true, close: true))
    }

    @Test func aRequestThatCannotBeParsedAfterItsAnswerCutsTheConnection() {
        var machine = Machine(isStream: false)
        machine.requestHead(Machine.Request(hasBody: true))
        _ = machine.answer(.unauthorized)
        let answer1 = machine.answer(.badRequest, closing: true)
        #expect(answer1 == .abort(trailers: false, close: true))
        let answer2 = machine.answer(.badRequest)
        #expect(answer2 == .nothing)
    }

    // MARK: timers and the downstream going away

    @Test func theHeaderReadTimerAnswers408AndTheIdleTimerCloses() {
        var fresh = Machine(isStream: false)
        let timer1 = fresh.connectionTimerFired(headerRead: true)
        #expect(timer1 == .headerTimeout)
        var idle = Machine(isStream: false)
        let timer2 = idle.connectionTimerFired(headerRead: false)
        #expect(timer2 == .close)
    }

    @Test func theDeadlineFailsTheExchangeAndTheConnectionCloses() {
        var (machine, id) = Self.started()
        let timer1 = machine.connectionTimerFired(headerRead: false)
        #expect(timer1 == .timeout(.upstreamTimeout, releasesUpstream: false))
        let answer = machine.answer(.upstreamTimeout)
        #expect(answer == .respond(grpc: false, body: true, close: true, next: .nothing))
        // The acquisition that completes later is given back untouched.
        let parts = machine.upstreamAcquired(id)
        #expect(parts == nil)

        var (proxying, proxyingID) = Self.started()
        _ = proxying.upstreamAcquired(proxyingID)
        let timer2 = proxying.connectionTimerFired(headerRead: false)
        #expect(timer2 == .timeout(.upstreamTimeout, releasesUpstream: true))
    }

    @Test func aDownstreamThatClosesLetsTheUpstreamGoAndLaterEventsAreStale() {
        var (machine, id) = Self.started()
        _ = machine.upstreamAcquired(id)
        machine.downstreamClosed()
        #expect(machine.state == .closed)
        let head = machine.responseHead(.ok, endpoint: 0, now: Self.start, budget: { true })
        #expect(head == .drop)
        let end = machine.responseEnd()
        #expect(end == .drop)
        let answer = machine.answer(.upstreamReset)
        #expect(answer == .nothing)
        let failure = machine.upstreamFailed(.upstreamReset, endpoint: 0, now: Self.start, budget: { true })
        #expect(failure == .stale)
    }
}

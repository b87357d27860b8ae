/// How a try failed, as the retry verdict sees it.
public enum TryFailure: Sendable, Hashable {
    /// No connection (or no stream) to the endpoint: nothing of the request left.
    case connectFailure
    /// The connection or stream closed or was reset before the answer's head.
    case reset
    /// No answer's head within the policy's `perTryTimeout`.
    case perTryTimeout
    /// The endpoint answered with this status (a try fails on 5xx).
    case status(Int)
}

/// What the exchange is when a try fails: the facts a retry depends on beyond the failure.
public struct TryContext: Sendable, Hashable {
    /// GET, HEAD, OPTIONS, PUT, DELETE or TRACE (RFC 9110 9.2.2).
    public var idempotent: Bool
    /// Some of the request reached the endpoint (it may have acted on it).
    public var requestSent: Bool
    /// Some of the answer reached the client: nothing can be tried again after that.
    public var responseStarted: Bool
    /// The whole request is still at hand to send again (its parts were kept, or nothing
    /// has left yet).
    public var replayable: Bool
    /// Retries made so far (0 after the first try).
    public var attempt: Int
    /// Time left before the request's deadline; nil when it has none.
    public var timeLeft: Duration?

    public init(
        idempotent: Bool,
        requestSent: Bool,
        responseStarted: Bool,
        replayable: Bool,
        attempt: Int,
        timeLeft: Duration? = nil
    ) {
        self.idempotent = idempotent
        self.requestSent = requestSent
        self.responseStarted = responseStarted
        self.replayable = replayable
        self.attempt = attempt
        self.timeLeft = timeLeft
    }
}

/// The outcome of a failed try: once more, or the failure goes to the client, and why.
public enum RetryVerdict: Sendable, Hashable {
    case retry
    case fail(RetryRefusal)
}

/// Why a failed try is not tried again (the order the verdict checks them in).
public enum RetryRefusal: String, Sendable, Hashable {
    /// Part of the answer already reached the client.
    case responseStarted = "response_started"
    /// The policy's `attempts` are used up (or it has none).
    case attemptsSpent = "attempts_spent"
    /// The policy's conditions (`on`) do not include this failure.
    case notACondition = "not_a_condition"
    /// The request was sent and its method is not idempotent: the endpoint may have acted
    /// on it, and the policy does not say its calls are safe to repeat.
    case notIdempotent = "not_idempotent"
    /// The request was sent and its body was too large to keep.
    case notReplayable = "not_replayable"
    /// The request's deadline has passed.
    case deadline
    /// The retry budget or the retries breaker is spent.
    case budget
}

extension RetryPolicy {
    /// The one retry decision of every failure path. Checks, in order: nothing of the
    /// answer has reached the client, an attempt is left, the failure is one of the policy's
    /// conditions, a request that was sent may be repeated (idempotent, or the policy says
    /// its calls are: `nonIdempotent`, or `503` and `5xx` for a status) and is still at
    /// hand, time is left; then, last and only when all of that holds, `budget` is asked
    /// (it takes a token: the retry budget and the retries breaker), so a refusal for
    /// another reason never spends one.
    ///
    /// Conditions: `connect-failure` (nothing sent, also a stream that could not be opened
    /// on a connection that had just died), `reset` (closed before the answer's head),
    /// `per-try-timeout`, and by status `503`, `idempotent-5xx`, `5xx`.
    public func verdict(
        after failure: TryFailure,
        _ context: TryContext,
        budget: () -> Bool
    ) -> RetryVerdict {
        if context.responseStarted { return .fail(.responseStarted) }
        if context.attempt >= attempts { return .fail(.attemptsSpent) }
        let repeatable: Bool
        switch failure {
        case .connectFailure:
            guard on.contains(.connectFailure) else { return .fail(.notACondition) }
            repeatable = nonIdempotent
        case .reset:
            // A reset before a byte left is a connection that failed, whatever the policy
            // says about resets of requests the endpoint may have seen.
            let allowed =
                context.requestSent ? on.contains(.reset) : on.contains(.connectFailure) || on.contains(.reset)
            guard allowed else { return .fail(.notACondition) }
            repeatable = nonIdempotent
        case .perTryTimeout:
            guard on.contains(.perTryTimeout) else { return .fail(.notACondition) }
            repeatable = nonIdempotent
        case .status(let code):
            guard code >= 500 else { return .fail(.notACondition) }
            if statusCodes.contains(code) {
                repeatable = nonIdempotent || code == 503 || on.contains(.any5xx)
            } else if on.contains(.any5xx) {
                repeatable = true
            } else if code == 503, on.contains(.unavailable) {
                // "Currently unable to handle the request" (RFC 9110 15.6.4): what a peer
                // sidecar that sheds load or is not ready answers before the app sees it.
                repeatable = true
            } else if on.contains(.idempotent5xx) {
                repeatable = nonIdempotent
            } else {
                return .fail(.notACondition)
            }
        }
        if context.requestSent {
            guard context.idempotent || repeatable else { return .fail(.notIdempotent) }
            guard context.replayable else { return .fail(.notReplayable) }
        } else if !context.replayable {
            return .fail(.notReplayable)
        }
        if let left = context.timeLeft, left <= .zero { return .fail(.deadline) }
        return budget() ? .retry : .fail(.budget)
    }
}

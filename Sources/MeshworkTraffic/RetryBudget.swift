/// A retry budget (Finagle's `RetryBudget`; Linkerd's `retryBudget`): retries may add at
/// most `ratio` of the requests seen in the last `window`, plus a floor of
/// `minRetriesPerSecond` so that a quiet service can still retry. However badly the
/// upstream fails, retries cannot multiply the load on it by more than `1 + ratio`.
public struct RetryBudget: Sendable {
    public let ratio: Double
    public let minRetriesPerSecond: Double
    public let window: Duration
    private var requests: SlidingWindowCounter
    private var retries: SlidingWindowCounter

    public init(ratio: Double = 0.2, minRetriesPerSecond: Double = 10, window: Duration = .seconds(10)) {
        self.ratio = ratio
        self.minRetriesPerSecond = minRetriesPerSecond
        self.window = window
        self.requests = SlidingWindowCounter(window: window)
        self.retries = SlidingWindowCounter(window: window)
    }

    /// The budget under new settings; the requests and retries seen stay counted while the
    /// window's length stays (a new length starts empty windows).
    public func reconfigured(ratio: Double, minRetriesPerSecond: Double, window: Duration) -> RetryBudget {
        var next = RetryBudget(ratio: ratio, minRetriesPerSecond: minRetriesPerSecond, window: window)
        if window == self.window {
            next.requests = requests
            next.retries = retries
        }
        return next
    }

    /// An original request (not a retry) was sent.
    public mutating func recordRequest(now: UInt64) {
        requests.add(now: now)
    }

    /// Retries the window allows now.
    public func allowance(now: UInt64) -> Double {
        let seconds = Double(window.nanoseconds) / 1e9
        return ratio * requests.total(now: now) + minRetriesPerSecond * seconds
    }

    /// Takes one retry from the budget, or returns false when it is spent.
    public mutating func tryRetry(now: UInt64) -> Bool {
        guard retries.total(now: now) + 1 <= allowance(now: now) else { return false }
        retries.add(now: now)
        return true
    }
}

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
/// Jitter", 2015): the n-th retry waits a uniform random time in
/// `[0, min(cap, base x 2^n))`, which spreads retries of many clients apart.
public struct ExponentialBackoff: Sendable, Hashable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .milliseconds(25), cap: Duration = .milliseconds(250)) {
        self.base = base
        self.cap = cap
    }

    /// The delay before retry number `attempt` (0 for the first retry).
    public func delay(attempt: Int, using random: inout some RandomNumberGenerator) -> Duration {
        let ceiling = min(Double(cap.nanoseconds), Double(base.nanoseconds) * pow2(min(attempt, 62)))
        guard ceiling >= 1 else { return .zero }
        return .nanoseconds(Int64(Double.random(in: 0..<ceiling, using: &random)))
    }

    private func pow2(_ n: Int) -> Double { Double(UInt64(1) << UInt64(n)) }
}

/// When a failed try is tried again.
public enum RetryCondition: String, Sendable, Hashable, CaseIterable {
    /// The connection to the endpoint could not be made (nothing was sent).
    case connectFailure = "connect-failure"
    /// The endpoint reset or closed before answering.
    case reset
    /// No answer's head within `perTryTimeout`.
    case perTryTimeout = "per-try-timeout"
    /// The endpoint answered 503.
    case unavailable = "503"
    /// Any 5xx, for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    case idempotent5xx = "idempotent-5xx"
    /// Any 5xx, whatever the method (only when the service says its calls are safe to
    /// repeat).
    case any5xx = "5xx"
}

/// A cluster's retry policy.
public struct RetryPolicy: Sendable, Hashable {
    /// Tries after the first; 0 disables retries.
    public var attempts: Int = 2
    public var on: Set<RetryCondition> = [.connectFailure, .reset, .perTryTimeout, .unavailable, .idempotent5xx]
    /// Each try gets at most this long (nil: only the request timeout applies), whatever
    /// `attempts` is.
    public var perTryTimeout: Duration?
    /// The service's calls are safe to repeat whatever the method: a POST or PATCH that
    /// reached an endpoint may be sent again after a reset, a per-try timeout or a 5xx the
    /// conditions name. Off: only idempotent methods are, once sent (a 503 excepted).
    public var nonIdempotent = false
    /// Statuses retried (as `idempotent-5xx` is: idempotent methods, or any with
    /// `nonIdempotent`) whatever `on` says of 5xx: a route's `retry.codes`.
    public var statusCodes: Set<Int> = []
    public var backoff = ExponentialBackoff()
    /// Share of requests that retries may add, the floor per second, and the window.
    public var budgetRatio: Double = 0.2
    public var budgetMinPerSecond: Double = 10
    public var budgetWindow: Duration = .seconds(10)

    public init() {}
}

/// Settings of client-side adaptive throttling.
public struct AdaptiveThrottlePolicy: Sendable, Hashable {
    public var k: Double = 2
    public var window: Duration = .seconds(120)

    public init() {}
}

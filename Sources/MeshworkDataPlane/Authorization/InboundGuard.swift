import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import Prometheus

/// What stands between callers and the app, one per event loop: authorization (by
/// identity, port, method and path), the inbound rate limit and the adaptive concurrency
/// limit (this loop's share of each). HTTP exchanges and TCP connections go through the
/// same checks. Touched only from its loop.
final class InboundGuard {
    /// Who may call this service: nil for a sidecar without a controller (no policies
    /// exist for it), or until the first policies arrive from the controller or the cache.
    var authorization: AuthorizationTable?
    /// A sidecar whose policies come from a controller and have not arrived yet: it fails
    /// closed, refusing every caller (HTTP: 503 `not_ready`), rather than admitting
    /// everyone until it learns who may call.
    var awaitingAuthorization = false
    var metrics: AuthorizationMetrics?
    var concurrencyLimiter: GradientConcurrencyLimiter?
    var rateLimit: TokenBucket?
    var logger: Logger
    private var deniedCounters: [SPIFFEID?: Counter] = [:]

    init(logger: Logger) {
        self.logger = logger
    }

    /// Whether any policy names a port (only then is the caller's port looked up).
    var usesPorts: Bool { authorization?.usesPorts == true }

    /// Decides a call to the app and counts a refusal (logged at debug: it can come at the
    /// request rate). A TCP connection is decided without method and path.
    func authorize(source: SPIFFEID?, port: Int, method: String?, path: String?) -> Bool {
        guard let table = authorization else { return !awaitingAuthorization }
        let decision = table.decide(source: source, port: port, method: method, path: path)
        guard case .denied(let reason) = decision else { return true }
        if let metrics {
            let counter = deniedCounters[source] ?? metrics.deniedCounter(source: source)
            deniedCounters[source] = counter
            counter.increment()
        }
        logger.debug(
            "call refused by authorization",
            metadata: ["source": "\(source?.description ?? "unauthenticated")", "reason": "\(reason)"]
        )
        return false
    }

    enum Admission: Equatable {
        /// The request may go to the app; `holdsSlot`: it holds a slot of the concurrency
        /// limit, given back with `release`.
        case admitted(holdsSlot: Bool)
        case refused(MeshError)
    }

    /// An HTTP request for the app, checked in order: the policies have arrived, the
    /// caller is authenticated when the mesh requires mTLS, it is authorized, and the rate
    /// and concurrency limits have room. `port` is asked only when a policy names ports.
    func admit(
        caller: ConnectionPeer?,
        requireMTLS: Bool,
        port: () -> Int,
        method: String,
        path: String,
        now: UInt64
    ) -> Admission {
        if awaitingAuthorization { return .refused(.notReady) }
        if requireMTLS, caller == nil { return .refused(.mtlsRequired) }
        if authorization != nil,
            !authorize(source: caller?.identity, port: usesPorts ? port() : 0, method: method, path: path)
        {
            return .refused(.unauthorized)
        }
        if rateLimit?.tryTake(now: now) == false {
            logger.debug("request shed: over the inbound rate limit")
            return .refused(.rateLimited)
        }
        switch concurrencyLimiter?.tryAcquire(now: now) {
        case .some(false):
            logger.debug(
                "request shed: inbound concurrency limit reached",
                metadata: ["limit": "\(concurrencyLimiter?.limit ?? 0)"]
            )
            return .refused(.concurrencyLimited)
        case .some(true):
            return .admitted(holdsSlot: true)
        case .none:
            return .admitted(holdsSlot: false)
        }
    }

    /// Gives back a concurrency slot, with the latency the limit learns from (nil: the
    /// exchange failed or did not finish, so it teaches nothing).
    func release(rtt: Duration?, now: UInt64) {
        concurrencyLimiter?.release(rtt: rtt, now: now)
    }
}

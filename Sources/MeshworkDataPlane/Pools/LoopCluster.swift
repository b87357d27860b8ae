import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOSSL
import Prometheus

/// Counts a cluster's open connections on one event loop against its share of the
/// circuit breaker's `maxConnections`.
final class ConnectionGate {
    /// A pushed policy may change it; connections over a lowered limit close in their time.
    var limit: Int
    private(set) var open = 0

    init(limit: Int) {
        self.limit = limit
    }

    func tryOpen() -> Bool {
        guard open < limit else { return false }
        open += 1
        return true
    }

    func closed() {
        open = max(0, open - 1)
    }
}

/// One cluster as one event loop sees it: its endpoints, a connection pool per endpoint,
/// and its traffic state (`ClusterTraffic`: balancer, outlier detection, circuit breaker,
/// retry budget and throttle, rebuilt from the policy on every update). Every loop has its
/// own copy, so nothing here takes a lock; limits are split across loops (`LoopShare`).
final class LoopCluster {
    enum Pool {
        case http1(HTTP1Pool)
        case http2(HTTP2Pool)
    }

    let name: String
    let metrics: ClusterMetrics
    private(set) var requestTimeout: TimeAmount
    /// True when the endpoints are peer sidecars: the original HTTP version travels in
    /// `x-meshwork-proto` so the far side restores it.
    let isMesh: Bool
    private(set) var endpoints: [SocketAddress]
    private(set) var retryPolicy: RetryPolicy
    private(set) var hashOn: HashKey?
    private var pools: [Pool]
    private var poolKeys: [String]
    private let loop: any EventLoop
    private let logger: Logger
    private let endpointProtocol: EndpointProtocol
    private let tls: PeerTLS?
    /// Whether peer sidecars are reached over mTLS (a mesh cluster of a sidecar with TLS).
    var usesMTLS: Bool { tls != nil }
    private let upgradeTLS: PeerTLS?
    private var connectTimeout: TimeAmount
    private var config: ClusterConfig
    private let zone: String?
    private let loopIndex: Int
    private let gate: ConnectionGate
    private var traffic: ClusterTraffic
    private var random: SplitMix64
    /// Bumped when the endpoints change; the endpoint tokens handed out carry it, so
    /// feedback about an endpoint of an older list is dropped rather than misattributed.
    private var generation = 0

    init(
        config: ClusterConfig,
        addresses: [SocketAddress],
        zone: String?,
        tls: MeshTLSSource?,
        loop: any EventLoop,
        loopIndex: Int,
        loopCount: Int,
        metrics: ClusterMetrics,
        logger: Logger
    ) {
        self.name = config.name
        self.metrics = metrics
        self.requestTimeout = .nanoseconds(config.requestTimeout.nanoseconds)
        self.isMesh = config.protocol == .mesh
        self.endpoints = addresses
        self.loop = loop
        self.logger = logger
        self.config = config
        self.zone = zone
        self.loopIndex = loopIndex
        // Peer sidecars are reached over mTLS when the sidecar has it; with a workload
        // identity, the peer must present the identity of the service the cluster is for.
        let peerTLS =
            config.protocol == .mesh
            ? tls.map { PeerTLS(source: $0, purpose: .http2, peerService: config.service, metrics: metrics) } : nil
        self.tls = peerTLS
        self.endpointProtocol = config.protocol
        self.upgradeTLS = peerTLS?.with(.http1)
        self.connectTimeout = .nanoseconds(config.connectTimeout.nanoseconds)
        self.retryPolicy = config.retries
        self.hashOn = config.hashOn
        // Seeded per loop and cluster: reproducible, yet loops do not pick in lockstep.
        let seed = StableHash.hash(config.name) &+ UInt64(loopIndex)
        self.random = SplitMix64(seed: seed ^ 0x5DEE_CE66)

        let now = loop.now.uptimeNanoseconds
        let share = LoopShare(loops: loopCount)
        self.traffic = ClusterTraffic(
            policy: Self.trafficPolicy(config, zone: zone),
            endpoints: Self.balancerEndpoints(config),
            share: share,
            seed: seed,
            now: now,
            roundRobinStart: loopIndex
        )
        self.gate = ConnectionGate(limit: share.of(config.circuitBreakers.maxConnections))
        self.pools = []
        self.poolKeys = []
        self.pools = addresses.indices.map { makePool($0, address: addresses[$0]) }
        self.poolKeys = config.endpoints.map(\.address.description)
    }

    /// The part of the cluster's config its traffic state is built from.
    private static func trafficPolicy(_ config: ClusterConfig, zone: String?) -> ClusterTrafficPolicy {
        ClusterTrafficPolicy(
            balancer: config.balancer,
            zones: ZonePolicy(
                localZone: config.zoneAware ? zone : nil,
                unservedLocalWeight: zone.flatMap { config.unservedWeights[$0] } ?? 0
            ),
            slowStart: config.slowStart,
            outlierDetection: config.outlierDetection,
            circuitBreakers: config.circuitBreakers,
            retries: config.retries,
            adaptiveThrottling: config.adaptiveThrottling
        )
    }

    /// The endpoints as the balancer weighs them (a deterministic subset scales weights).
    private static func balancerEndpoints(_ config: ClusterConfig) -> [BalancerEndpoint] {
        let subsetWeights = config.subset.map {
            DeterministicAperture.weights(
                backendCount: config.endpoints.count,
                clientIndex: $0.clientIndex,
                clientCount: $0.clientCount,
                subsetSize: $0.size
            )
        }
        return config.endpoints.enumerated().map { index, endpoint in
            BalancerEndpoint(
                key: endpoint.address.description,
                weight: endpoint.weight * (subsetWeights?[index] ?? 1),
                zone: endpoint.zone
            )
        }
    }

    private func makePool(_ index: Int, address: SocketAddress) -> Pool {
        let endpointMetrics = metrics.endpoint(config.endpoints[index].address.description)
        switch config.protocol {
        case .http1:
            return .http1(
                HTTP1Pool(
                    loop: loop,
                    address: address,
                    tls: nil,
                    connectTimeout: .nanoseconds(config.connectTimeout.nanoseconds),
                    idleTimeout: .nanoseconds(config.idleTimeout.nanoseconds),
                    maxIdle: config.maxIdleConnections,
                    metrics: endpointMetrics,
                    clusterMetrics: metrics,
                    gate: gate
                )
            )
        case .h2c, .mesh:
            return .http2(
                HTTP2Pool(
                    loop: loop,
                    address: address,
                    tls: tls,
                    connectTimeout: .nanoseconds(config.connectTimeout.nanoseconds),
                    idleTimeout: .nanoseconds(config.idleTimeout.nanoseconds),
                    maxStreams: config.maxConcurrentStreams,
                    maxStreamsPerConnection: config.maxRequestsPerConnection,
                    metrics: endpointMetrics,
                    clusterMetrics: metrics,
                    gate: gate
                )
            )
        }
    }

    /// Replaces the endpoints (and policy) without dropping anything: pools of endpoints
    /// that stay are kept with their connections, pools of endpoints that left finish
    /// their in-flight requests and close, and the balancer keeps what it learnt about
    /// the endpoints that stay. Runs on this cluster's loop.
    func update(_ newConfig: ClusterConfig, addresses: [SocketAddress]) {
        loop.preconditionInEventLoop()
        precondition(newConfig.endpoints.count == addresses.count, "one address per endpoint")
        var oldPools: [String: Pool] = [:]
        for (key, pool) in zip(poolKeys, pools) { oldPools[key] = pool }
        let oldKeysList = poolKeys
        config = newConfig
        endpoints = addresses
        requestTimeout = .nanoseconds(newConfig.requestTimeout.nanoseconds)
        connectTimeout = .nanoseconds(newConfig.connectTimeout.nanoseconds)
        retryPolicy = newConfig.retries
        hashOn = newConfig.hashOn
        var newPools: [Pool] = []
        let newKeys = newConfig.endpoints.map(\.address.description)
        for (index, key) in newKeys.enumerated() {
            if let pool = oldPools.removeValue(forKey: key) {
                newPools.append(pool)
            } else {
                newPools.append(makePool(index, address: addresses[index]))
            }
        }
        for pool in oldPools.values {
            switch pool {
            case .http1(let pool): pool.retire()
            case .http2(let pool): pool.retire()
            }
        }
        pools = newPools
        poolKeys = newKeys
        // Kept pools take the pushed connection settings for what they open from now on.
        for pool in pools {
            switch pool {
            case .http1(let pool):
                pool.reconfigure(
                    connectTimeout: connectTimeout,
                    idleTimeout: .nanoseconds(newConfig.idleTimeout.nanoseconds),
                    maxIdle: newConfig.maxIdleConnections
                )
            case .http2(let pool):
                pool.reconfigure(
                    connectTimeout: connectTimeout,
                    idleTimeout: .nanoseconds(newConfig.idleTimeout.nanoseconds),
                    maxStreams: newConfig.maxConcurrentStreams,
                    maxStreamsPerConnection: newConfig.maxRequestsPerConnection
                )
            }
        }
        gate.limit = traffic.share.of(newConfig.circuitBreakers.maxConnections)
        let oldKeys = Dictionary(oldKeysList.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        let ejectedChange = traffic.update(
            policy: Self.trafficPolicy(newConfig, zone: zone),
            endpoints: Self.balancerEndpoints(newConfig),
            previous: newKeys.map { oldKeys[$0] },
            seed: StableHash.hash(name) &+ UInt64(loopIndex) &+ UInt64(generation + 1),
            now: loop.now.uptimeNanoseconds,
            roundRobinStart: loopIndex
        )
        if ejectedChange != 0 { metrics.ejectedEndpoints.increment(by: Double(ejectedChange)) }
        generation += 1
    }

    /// An endpoint token: the index in the current list, tagged with the generation.
    private func token(_ index: Int) -> Int { generation << 32 | index }

    /// The current index of a token, or nil when it belongs to an older endpoint list.
    private func index(of token: Int) -> Int? {
        guard token >> 32 == generation else { return nil }
        let index = token & 0xFFFF_FFFF
        return index < endpoints.count ? index : nil
    }

    private var now: UInt64 { loop.now.uptimeNanoseconds }

    /// The result of an acquisition and the endpoint it went to (nil when none was picked).
    typealias Acquired = (Result<any Upstream, MeshError>, _ endpoint: Int?) -> Void

    // MARK: admission (once per request, not per try)

    /// Admits a request to the cluster: the active-requests breaker and adaptive throttling.
    /// On success the caller must call `requestEnded()` once when the exchange is over.
    func admit() -> MeshError? {
        // Mutated in place (optional chaining), never copied out: no copy-on-write per request.
        if traffic.throttle?.shouldReject(now: now, using: &random) == true {
            logger.debug(
                "request throttled locally",
                metadata: [
                    "cluster": "\(name)", "probability": "\(traffic.throttle?.rejectionProbability(now: now) ?? 0)",
                ]
            )
            return .throttled
        }
        guard traffic.breaker.tryAcquire(.requests) else {
            logger.debug("circuit breaker open", metadata: ["cluster": "\(name)", "resource": "requests"])
            return .overflowRequests
        }
        traffic.retryBudget.recordRequest(now: now)
        return nil
    }

    func requestEnded() {
        traffic.breaker.release(.requests)
    }

    // MARK: retries

    /// Takes a retry from the budget and the retries breaker; false when either is spent.
    /// On success the caller must call `retryEnded()` when the retry is over.
    func tryRetry() -> Bool {
        guard traffic.breaker.tryAcquire(.retries) else {
            metrics.retryBudgetExhausted.increment()
            logger.debug("circuit breaker open", metadata: ["cluster": "\(name)", "resource": "retries"])
            return false
        }
        guard traffic.retryBudget.tryRetry(now: now) else {
            traffic.breaker.release(.retries)
            metrics.retryBudgetExhausted.increment()
            logger.debug("retry budget exhausted", metadata: ["cluster": "\(name)"])
            return false
        }
        metrics.retries.increment()
        return true
    }

    func retryEnded() {
        traffic.breaker.release(.retries)
    }

    /// Full-jitter exponential backoff before retry number `attempt` (0-based).
    func backoff(attempt: Int) -> TimeAmount {
        .nanoseconds(retryPolicy.backoff.delay(attempt: attempt, using: &random).nanoseconds)
    }

    // MARK: picking and feedback

    private func pickIndex(hash: UInt64?, avoiding avoidingToken: Int?) -> Int? {
        let avoiding = avoidingToken.flatMap { index(of: $0) }
        if let events = traffic.outliers?.tick(now: now), !events.isEmpty { apply(events) }
        guard var index = traffic.balancer.pick(now: now, hash: hash) else { return nil }
        // A retry goes elsewhere when it can: a second look usually finds another endpoint.
        if let avoiding, index == avoiding, traffic.balancer.availableCount > 1 {
            for _ in 0..<3 {
                guard let other = traffic.balancer.pick(now: now, hash: hash.map { StableHash.mix($0) }) else { break }
                index = other
                if other != avoiding { break }
            }
        }
        return index
    }

    /// The request to endpoint `index` that `acquire` counted got its answer (or failed)
    /// after `nanoseconds`: the latency feedback of the balancer.
    func requestFinished(_ token: Int, nanoseconds: Int64) {
        guard let index = index(of: token) else { return }
        traffic.balancer.requestFinished(index, rtt: .nanoseconds(max(0, nanoseconds)), now: now)
    }

    /// What the exchange with endpoint `index` came to: outlier detection and throttling
    /// learn from it.
    func record(_ token: Int, _ outcome: ExchangeOutcome) {
        if outcome != .gatewayFailure { traffic.throttle?.recordAccept(now: now) }
        guard let index = index(of: token) else { return }
        if let event = traffic.outliers?.record(index, outcome, now: now) { apply([event]) }
    }

    private func apply(_ events: [OutlierEvent]) {
        for event in events {
            switch event {
            case .ejected(let index, let reason, let duration):
                traffic.balancer.setAvailable(index, false)
                metrics.ejections[reason.rawValue]?.increment()
                metrics.ejectedEndpoints.increment()
                logger.warning(
                    "endpoint ejected",
                    metadata: [
                        "cluster": "\(name)", "endpoint": "\(endpoints[index])", "reason": "\(reason.rawValue)",
                        "duration": "\(duration)",
                    ]
                )
            case .returned(let index):
                traffic.balancer.setAvailable(index, true)
                metrics.ejectedEndpoints.decrement()
                logger.info("endpoint returned", metadata: ["cluster": "\(name)", "endpoint": "\(endpoints[index])"])
            }
        }
    }

    /// Picks an endpoint and hands back a ready upstream exchange (a pooled HTTP/1.1
    /// connection or a fresh HTTP/2 stream) tagged with the endpoint's index; the caller
    /// reports the latency with `requestFinished` and the outcome with `record`. The
    /// callback runs on this loop.
    func acquire(hash: UInt64? = nil, avoiding: Int? = nil, _ callback: @escaping Acquired) {
        guard let index = pickIndex(hash: hash, avoiding: avoiding) else {
            callback(.failure(.noHealthyEndpoint), nil)
            return
        }
        guard traffic.breaker.tryAcquire(.pendingRequests) else {
            logger.debug("circuit breaker open", metadata: ["cluster": "\(name)", "resource": "pending_requests"])
            callback(.failure(.overflowPending), nil)
            return
        }
        traffic.balancer.requestStarted(index)
        let started = loop.now
        let token = self.token(index)
        let tagged: (Result<any Upstream, MeshError>) -> Void = { result in
            self.traffic.breaker.release(.pendingRequests)
            switch result {
            case .success(let handler):
                handler.endpointIndex = token
            case .failure(let error):
                // A failed connection is a slow answer: the balancer hears of it.
                self.requestFinished(token, nanoseconds: (self.loop.now - started).nanoseconds)
                if error != .overflowConnections { self.record(token, .gatewayFailure) }
            }
            callback(result, token)
        }
        switch pools[index] {
        case .http1(let pool): pool.acquire(tagged)
        case .http2(let pool): pool.acquire(tagged)
        }
    }

    /// A connection of its own for an HTTP/1.1 `Upgrade` request (WebSocket): plain to
    /// HTTP/1.1 endpoints, TLS with ALPN http/1.1 to peer sidecars. HTTP/2 cannot carry
    /// an Upgrade, so h2c clusters refuse it.
    func acquireUpgrade(hash: UInt64? = nil, _ callback: @escaping Acquired) {
        guard endpointProtocol != .h2c else {
            callback(.failure(.upgradeUnsupported), nil)
            return
        }
        guard let index = pickIndex(hash: hash, avoiding: nil) else {
            callback(.failure(.noHealthyEndpoint), nil)
            return
        }
        let clusterMetrics = metrics
        HTTP1Pool.connect(
            loop: loop,
            address: endpoints[index],
            tls: upgradeTLS,
            connectTimeout: connectTimeout,
            kind: .dedicated,
            metrics: metrics.endpoint(poolKeys[index])
        ) { result in
            if case .success(let (channel, _)) = result {
                clusterMetrics.connectionsTotal.increment()
                clusterMetrics.connectionsActive.increment()
                channel.closeFuture.whenComplete { _ in clusterMetrics.connectionsActive.decrement() }
            }
            callback(result.map { $0.1 as any Upstream }, self.token(index))
        }
    }

    /// Picks an endpoint for a raw TCP connection.
    func pickEndpoint(hash: UInt64? = nil) -> SocketAddress? {
        pickIndex(hash: hash, avoiding: nil).map { endpoints[$0] }
    }

    /// New connections for every request from now on: pooled ones take no new request and
    /// close once their requests are done (a revocation: each new handshake checks it).
    func retireConnections() {
        for pool in pools {
            switch pool {
            case .http1(let pool): pool.closeIdle()
            case .http2(let pool): pool.retire()
            }
        }
    }

    func closeIdle() {
        for pool in pools {
            switch pool {
            case .http1(let pool): pool.closeIdle()
            case .http2(let pool): pool.closeAll()
            }
        }
    }
}

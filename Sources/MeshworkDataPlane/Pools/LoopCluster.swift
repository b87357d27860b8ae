import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOSSL
import Prometheus

/// One cluster as one event loop sees it: its endpoints, a balancer, and a connection pool
/// per endpoint. Every loop has its own copy, so picking and pooling take no lock.
final class LoopCluster {
    enum Pool {
        case http1(HTTP1Pool)
        case http2(HTTP2Pool)
    }

    let name: String
    let metrics: ClusterMetrics
    let requestTimeout: TimeAmount
    /// True when the endpoints are peer sidecars: the original HTTP version travels in
    /// `x-meshwork-proto` so the far side restores it.
    let isMesh: Bool
    let endpoints: [SocketAddress]
    private let pools: [Pool]
    private let loop: any EventLoop
    private let endpointProtocol: EndpointProtocol
    private let upgradeTLS: NIOSSLContext?
    private let connectTimeout: TimeAmount
    private var balancer: Balancer

    init(
        name: String,
        endpoints: [SocketAddress],
        protocol: EndpointProtocol,
        tls: NIOSSLContext?,
        upgradeTLS: NIOSSLContext?,
        connectTimeout: TimeAmount,
        requestTimeout: TimeAmount,
        idleTimeout: TimeAmount,
        maxIdleConnections: Int,
        maxConcurrentStreams: Int,
        balancer: BalancerKind,
        loop: any EventLoop,
        loopIndex: Int,
        metrics: ClusterMetrics
    ) {
        self.name = name
        self.metrics = metrics
        self.requestTimeout = requestTimeout
        self.isMesh = `protocol` == .mesh
        self.endpoints = endpoints
        self.loop = loop
        self.endpointProtocol = `protocol`
        self.upgradeTLS = `protocol` == .mesh ? upgradeTLS : nil
        self.connectTimeout = connectTimeout
        switch balancer {
        case .roundRobin:
            self.balancer = .roundRobin(RoundRobinBalancer(start: loopIndex))
        case .p2cPeakEWMA:
            // Seeded per loop and cluster: reproducible, yet loops do not pick in lockstep.
            var seed: UInt64 = 0xCBF2_9CE4_8422_2325
            for byte in name.utf8 { seed = (seed ^ UInt64(byte)) &* 0x100_0000_01B3 }
            self.balancer = .p2c(
                P2CBalancer(
                    count: endpoints.count,
                    random: SplitMix64(seed: seed &+ UInt64(loopIndex)),
                    now: loop.now.uptimeNanoseconds
                )
            )
        }
        self.pools = endpoints.enumerated().map { index, address in
            switch `protocol` {
            case .http1:
                return .http1(
                    HTTP1Pool(
                        loop: loop,
                        address: address,
                        tls: nil,
                        connectTimeout: connectTimeout,
                        idleTimeout: idleTimeout,
                        maxIdle: maxIdleConnections,
                        metrics: metrics.endpoints[index],
                        clusterMetrics: metrics
                    )
                )
            case .h2c, .mesh:
                return .http2(
                    HTTP2Pool(
                        loop: loop,
                        address: address,
                        tls: `protocol` == .mesh ? tls : nil,
                        connectTimeout: connectTimeout,
                        idleTimeout: idleTimeout,
                        maxStreams: maxConcurrentStreams,
                        metrics: metrics.endpoints[index],
                        clusterMetrics: metrics
                    )
                )
            }
        }
    }

    /// The balancer of one cluster on one loop.
    enum Balancer {
        case roundRobin(RoundRobinBalancer)
        case p2c(P2CBalancer<SplitMix64>)
    }

    private func pickIndex() -> Int? {
        switch balancer {
        case .roundRobin(var roundRobin):
            let index = roundRobin.pick(count: endpoints.count)
            balancer = .roundRobin(roundRobin)
            return index
        case .p2c(var p2c):
            let index = p2c.pick(now: loop.now.uptimeNanoseconds)
            balancer = .p2c(p2c)
            return index
        }
    }

    /// A request left for endpoint `index`.
    private func requestStarted(_ index: Int) {
        if case .p2c(var p2c) = balancer {
            p2c.requestStarted(index)
            balancer = .p2c(p2c)
        }
    }

    /// The request to endpoint `index` that `requestStarted` counted got its answer (or
    /// failed) after `nanoseconds`: the latency feedback of the balancer.
    func requestFinished(_ index: Int, nanoseconds: Int64) {
        if case .p2c(var p2c) = balancer {
            p2c.requestFinished(index, rtt: .nanoseconds(max(0, nanoseconds)), now: loop.now.uptimeNanoseconds)
            balancer = .p2c(p2c)
        }
    }

    /// Picks an endpoint and hands back a ready upstream exchange (a pooled HTTP/1.1
    /// connection or a fresh HTTP/2 stream) tagged with the endpoint's index; the caller
    /// reports the latency with `requestFinished`. The callback runs on this loop.
    func acquire(_ callback: @escaping (Result<UpstreamHandler, MeshError>) -> Void) {
        guard let index = pickIndex() else {
            callback(.failure(.noHealthyEndpoint))
            return
        }
        requestStarted(index)
        let started = loop.now
        let tagged: (Result<UpstreamHandler, MeshError>) -> Void = { result in
            switch result {
            case .success(let handler):
                handler.endpointIndex = index
            case .failure:
                // A failed connection is a slow answer: the balancer hears of it.
                self.requestFinished(index, nanoseconds: (self.loop.now - started).nanoseconds)
            }
            callback(result)
        }
        switch pools[index] {
        case .http1(let pool): pool.acquire(tagged)
        case .http2(let pool): pool.acquire(tagged)
        }
    }

    /// A connection of its own for an HTTP/1.1 `Upgrade` request (WebSocket): plain to
    /// HTTP/1.1 endpoints, TLS with ALPN http/1.1 to peer sidecars. HTTP/2 cannot carry
    /// an Upgrade, so h2c clusters refuse it.
    func acquireUpgrade(_ callback: @escaping (Result<UpstreamHandler, MeshError>) -> Void) {
        guard endpointProtocol != .h2c else {
            callback(.failure(.upgradeUnsupported))
            return
        }
        guard let index = pickIndex() else {
            callback(.failure(.noHealthyEndpoint))
            return
        }
        let clusterMetrics = metrics
        HTTP1Pool.connect(
            loop: loop,
            address: endpoints[index],
            tls: upgradeTLS,
            connectTimeout: connectTimeout,
            kind: .dedicated,
            metrics: metrics.endpoints[index]
        ) { result in
            if case .success(let (channel, _)) = result {
                clusterMetrics.connectionsTotal.increment()
                clusterMetrics.connectionsActive.increment()
                channel.closeFuture.whenComplete { _ in clusterMetrics.connectionsActive.decrement() }
            }
            callback(result.map { $0.1 })
        }
    }

    /// Picks an endpoint for a raw TCP connection.
    func pickEndpoint() -> SocketAddress? {
        pickIndex().map { endpoints[$0] }
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

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
    private var balancer: RoundRobinBalancer

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
        self.balancer = RoundRobinBalancer(start: loopIndex)
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

    /// Picks an endpoint and hands back a ready upstream exchange (a pooled HTTP/1.1
    /// connection or a fresh HTTP/2 stream). The callback runs on this loop.
    func acquire(_ callback: @escaping (Result<UpstreamHandler, MeshError>) -> Void) {
        guard let index = balancer.pick(count: pools.count) else {
            callback(.failure(.noHealthyEndpoint))
            return
        }
        switch pools[index] {
        case .http1(let pool): pool.acquire(callback)
        case .http2(let pool): pool.acquire(callback)
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
        guard let index = balancer.pick(count: endpoints.count) else {
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
        balancer.pick(count: endpoints.count).map { endpoints[$0] }
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

import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus

/// Keep-alive HTTP/1.1 connections to one endpoint, owned by one event loop.
///
/// Each event loop has its own pool, so a request and the connection that carries it stay
/// on the loop that accepted the request, and the pool needs no lock.
final class HTTP1Pool {
    private let loop: any EventLoop
    private let address: SocketAddress
    private let tls: PeerTLS?
    private var connectTimeout: TimeAmount
    private var idleTimeout: TimeAmount
    private var maxIdle: Int
    private let metrics: EndpointMetrics
    private let clusterMetrics: ClusterMetrics
    private let gate: ConnectionGate
    /// Most recently used last: reuse the warmest connection, let the coldest time out.
    private var idle: [(handler: UpstreamHandler, since: NIODeadline)] = []
    /// One timer per pool closes connections idle longer than `idleTimeout`; returning a
    /// connection to the pool schedules nothing when the timer is already pending.
    private var sweeper: Scheduled<Void>?

    init(
        loop: any EventLoop,
        address: SocketAddress,
        tls: PeerTLS?,
        connectTimeout: TimeAmount,
        idleTimeout: TimeAmount,
        maxIdle: Int,
        metrics: EndpointMetrics,
        clusterMetrics: ClusterMetrics,
        gate: ConnectionGate
    ) {
        self.gate = gate
        self.loop = loop
        self.address = address
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.maxIdle = maxIdle
        self.metrics = metrics
        self.clusterMetrics = clusterMetrics
    }

    /// A pushed policy's connection settings, for the connections opened and the idle ones
    /// kept from now on.
    func reconfigure(connectTimeout: TimeAmount, idleTimeout: TimeAmount, maxIdle: Int) {
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.maxIdle = maxIdle
    }

    func acquire(_ callback: @escaping (Result<any Upstream, MeshError>) -> Void) {
        loop.preconditionInEventLoop()
        while let (handler, _) = idle.popLast() {
            if handler.isActive {
                callback(.success(handler))
                return
            }
        }
        connect(callback)
    }

    private func connect(_ callback: @escaping (Result<any Upstream, MeshError>) -> Void) {
        guard gate.tryOpen() else {
            callback(.failure(.overflowConnections))
            return
        }
        let gate = self.gate
        Self.connect(
            loop: loop,
            address: address,
            tls: tls,
            connectTimeout: connectTimeout,
            kind: .pooled,
            metrics: metrics
        ) { result in
            switch result {
            case .success(let (channel, handler)):
                self.track(channel: channel, handler: handler)
                callback(.success(handler))
            case .failure(let error):
                gate.closed()
                callback(.failure(error))
            }
        }
    }

    /// Opens one HTTP/1.1 connection ending in an `UpstreamHandler`. Bytes the response
    /// decoder read past an upgrade's `101` are forwarded when it is removed (tunnels).
    static func connect(
        loop: any EventLoop,
        address: SocketAddress,
        tls: PeerTLS?,
        connectTimeout: TimeAmount,
        kind: UpstreamHandler.Kind,
        metrics: EndpointMetrics,
        _ callback: @escaping (Result<(any Channel, UpstreamHandler), MeshError>) -> Void
    ) {
        let handler = UpstreamHandler(kind: kind, endpoint: metrics)
        let boundHandler = NIOLoopBound(handler, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        try sync.addHandler(tls.makeHandler())
                    }
                    try sync.addHandler(HTTPRequestEncoder())
                    try sync.addHandler(
                        ByteToMessageHandler(
                            HTTPResponseDecoder(
                                leftOverBytesStrategy: .forwardBytes,
                                informationalResponseStrategy: .forward
                            )
                        )
                    )
                    try sync.addHandler(boundHandler.value)
                }
            }
            .connect(to: address)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    callback(.success((channel, handler)))
                case .failure(let error):
                    callback(.failure(MeshError(connectError: error)))
                }
            }
    }

    private func track(channel: any Channel, handler: UpstreamHandler) {
        metrics.connectionsActive.increment()
        clusterMetrics.connectionsActive.increment()
        clusterMetrics.connectionsTotal.increment()
        handler.release = { [weak self] handler in self?.putBack(handler) }
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            self.metrics.connectionsActive.decrement()
            self.clusterMetrics.connectionsActive.decrement()
            self.gate.closed()
            self.remove(handler)
        }
    }

    /// The endpoint left the cluster: idle connections close now, busy ones when their
    /// exchange ends.
    func retire() {
        retired = true
        closeIdle()
    }

    private var retired = false

    private func putBack(_ handler: UpstreamHandler) {
        guard idle.count < maxIdle, !retired else {
            handler.close()
            return
        }
        let now = loop.now
        idle.append((handler, now))
        if sweeper == nil { scheduleSweep(at: now + idleTimeout) }
    }

    private func scheduleSweep(at deadline: NIODeadline) {
        sweeper = loop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.sweep()
        }
    }

    private func sweep() {
        sweeper = nil
        let cutoff = loop.now - idleTimeout
        while let oldest = idle.first, oldest.since <= cutoff {
            idle.removeFirst()
            oldest.handler.close()
        }
        if let oldest = idle.first { scheduleSweep(at: oldest.since + idleTimeout) }
    }

    private func remove(_ handler: UpstreamHandler) {
        if let index = idle.firstIndex(where: { $0.handler === handler }) {
            idle.remove(at: index)
        }
    }

    /// Closes every idle connection (drain).
    func closeIdle() {
        let all = idle
        idle.removeAll()
        sweeper?.cancel()
        sweeper = nil
        for (handler, _) in all {
            handler.close()
        }
    }
}

extension MeshError {
    init(connectError error: any Error) {
        if let error = error as? ChannelError, case .connectTimeout = error {
            self = .connectTimeout
        } else {
            self = .connectFailed
        }
    }
}

import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import Prometheus

/// HTTP/2 connections to one endpoint (a peer sidecar over mTLS, or an h2c server), owned by
/// one event loop. Requests become streams, multiplexed over as few connections as the
/// stream limit allows; HTTP/1.1 from the app travels this way between sidecars.
final class HTTP2Pool {
    private final class Connection {
        let channel: any Channel
        let streams: HTTP2ClientStreams
        var openStreams = 0
        /// Streams made on this connection in its life (each takes a stream ID).
        var streamsMade = 0
        var usable = true
        /// Closes the connection once it has carried no stream for the idle timeout. The
        /// timer is rescheduled lazily: going idle only moves `idleDeadline`.
        var idleTimer: Scheduled<Void>?
        var idleDeadline = NIODeadline.distantFuture

        init(channel: any Channel, streams: HTTP2ClientStreams) {
            self.channel = channel
            self.streams = streams
        }
    }

    typealias Callback = (Result<any Upstream, MeshError>) -> Void

    private let loop: any EventLoop
    private let address: SocketAddress
    private let tls: PeerTLS?
    private var connectTimeout: TimeAmount
    private var idleTimeout: TimeAmount
    private var maxStreams: Int
    private var maxStreamsPerConnection: Int
    private let metrics: EndpointMetrics
    private let clusterMetrics: ClusterMetrics
    private var connections: [Connection] = []
    private var connecting = false
    private var waiters: [Callback] = []
    private let gate: ConnectionGate

    init(
        loop: any EventLoop,
        address: SocketAddress,
        tls: PeerTLS?,
        connectTimeout: TimeAmount,
        idleTimeout: TimeAmount,
        maxStreams: Int,
        maxStreamsPerConnection: Int = ClusterConfig.streamIDsPerConnection,
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
        self.maxStreams = maxStreams
        self.maxStreamsPerConnection = min(maxStreamsPerConnection, ClusterConfig.streamIDsPerConnection)
        self.metrics = metrics
        self.clusterMetrics = clusterMetrics
    }

    /// A pushed policy's connection settings, for the streams and connections opened from
    /// now on.
    func reconfigure(connectTimeout: TimeAmount, idleTimeout: TimeAmount, maxStreams: Int, maxStreamsPerConnection: Int)
    {
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.maxStreams = maxStreams
        self.maxStreamsPerConnection = min(maxStreamsPerConnection, ClusterConfig.streamIDsPerConnection)
    }

    func acquire(_ callback: @escaping Callback) {
        loop.preconditionInEventLoop()
        if let connection = connections.first(where: { $0.usable && $0.openStreams < maxStreams }) {
            openStream(on: connection, callback)
        } else {
            waiters.append(callback)
            if !connecting { connect() }
        }
    }

    private func connect() {
        guard gate.tryOpen() else {
            failWaiters(.overflowConnections)
            return
        }
        connecting = true
        let tls = self.tls
        let streams = HTTP2ClientStreams(scheme: tls == nil ? "http" : "https", streamWindow: Self.streamWindow)
        let boundStreams = NIOLoopBound(streams, eventLoop: loop)
        var connectionConfiguration = NIOHTTP2Handler.ConnectionConfiguration()
        // Frames that arrive for streams we reset (the app hung up mid-request) count as
        // "glitches"; NIO's lifetime default of 200 would end a busy pooled connection
        // within minutes.
        connectionConfiguration.maximumConnectionGlitches = 100_000
        connectionConfiguration.maximumRecentlyResetStreams = recentlyResetStreamsRemembered
        // Requests were already validated by the HTTP/1 parser that read them, and
        // responses are validated again by the HTTP/1 encoder towards the app: a second
        // HPACK-level check on this hop only costs CPU.
        connectionConfiguration.headerBlockValidation = .disabled
        connectionConfiguration.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 1000),
            HTTP2Setting(parameter: .initialWindowSize, value: Self.streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 1 << 17),
        ]
        let configuration = connectionConfiguration
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        try sync.addHandler(tls.makeHandler())
                    }
                    try sync.addHandler(FlushCoalescingHandler())
                    // No stream multiplexer: HTTP2ClientStreams carries every stream itself.
                    try sync.addHandler(
                        NIOHTTP2Handler(mode: .client, frameDelegate: nil, connectionConfiguration: configuration)
                    )
                    try sync.addHandler(boundStreams.value)
                }
            }
        let future = bootstrap.connect(to: address)
        streams.onActive = {
            self.connecting = false
            let connection = Connection(channel: streams.channel!, streams: streams)
            streams.onGoAway = { [weak self] in self?.peerSentGoAway(connection) }
            streams.onConnectionError = { connection.usable = false }
            streams.onStreamClosed = { [weak self] in self?.streamEnded(on: connection) }
            self.track(connection)
            let waiting = self.waiters
            self.waiters.removeAll()
            for waiter in waiting {
                self.acquire(waiter)
            }
        }
        future.assumeIsolated().whenFailure { error in
            streams.onActive = nil
            self.connecting = false
            self.gate.closed()
            self.failWaiters(MeshError(connectError: error))
        }
    }

    private func failWaiters(_ error: MeshError) {
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting { waiter(.failure(error)) }
    }

    private func track(_ connection: Connection) {
        connections.append(connection)
        metrics.connectionsActive.increment()
        clusterMetrics.connectionsActive.increment()
        clusterMetrics.connectionsTotal.increment()
        connection.channel.closeFuture.assumeIsolated().whenComplete { _ in
            connection.usable = false
            connection.idleTimer?.cancel()
            self.metrics.connectionsActive.decrement()
            self.clusterMetrics.connectionsActive.decrement()
            self.gate.closed()
            self.connections.removeAll { $0 === connection }
        }
    }

    /// The stream window announced to peers (and kept topped up).
    static let streamWindow = 1 << 20

    private func openStream(on connection: Connection, _ callback: @escaping Callback) {
        guard connection.streams.isActive else {
            connection.usable = false
            callback(.failure(.upstreamReset))
            return
        }
        connection.openStreams += 1
        connection.streamsMade += 1
        if connection.streamsMade >= maxStreamsPerConnection {
            // Retired before its stream IDs run out: this stream is its last; it closes
            // when the last open one ends, and the next request opens another.
            connection.usable = false
            connection.idleTimer?.cancel()
        }
        callback(.success(connection.streams.makeStream(endpoint: metrics)))
    }

    private func streamEnded(on connection: Connection) {
        connection.openStreams -= 1
        guard connection.openStreams == 0 else { return }
        if connection.usable {
            armIdleTimer(connection)
        } else {
            connection.channel.close(promise: nil)
        }
    }

    private func armIdleTimer(_ connection: Connection) {
        connection.idleDeadline = loop.now + idleTimeout
        if connection.idleTimer == nil { scheduleIdleCheck(connection) }
    }

    private func scheduleIdleCheck(_ connection: Connection) {
        connection.idleTimer = loop.assumeIsolated().scheduleTask(deadline: connection.idleDeadline) {
            connection.idleTimer = nil
            guard connection.openStreams == 0, connection.usable else { return }
            if self.loop.now >= connection.idleDeadline {
                connection.usable = false
                connection.channel.close(promise: nil)
            } else {
                self.scheduleIdleCheck(connection)
            }
        }
    }

    /// The peer is draining: open no new streams on this connection, close it once idle.
    private func peerSentGoAway(_ connection: Connection) {
        connection.usable = false
        if connection.openStreams == 0 { connection.channel.close(promise: nil) }
    }

    /// The endpoint left the cluster: no new streams; each connection closes when its last
    /// stream ends (in-flight requests finish).
    func retire() {
        for connection in connections {
            connection.usable = false
            connection.idleTimer?.cancel()
            if connection.openStreams == 0 { connection.channel.close(promise: nil) }
        }
    }

    /// Closes every connection (drain): in-flight streams finish on their own first
    /// because we send GOAWAY by closing gracefully.
    func closeAll() {
        for connection in connections {
            connection.usable = false
            connection.channel.close(mode: .all, promise: nil)
        }
    }
}

import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS

/// Builds the pipelines of accepted connections. All functions run on the channel's loop.
enum ListenerPipelines {
    /// HTTP/1.1 server side followed by the proxy.
    static func addHTTP1(
        to channel: any Channel,
        settings: ProxySettings,
        contexts: LoopContexts,
        peer: ConnectionPeer? = nil
    ) throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = settings.maxHeaderBytes
        limits.maxHeaderFieldSize = settings.maxHeaderBytes
        let sync = channel.pipeline.syncOperations
        try sync.configureHTTPServerPipeline(
            // (ProxyHandler takes pipelined requests in order itself: see its `pipelined`.)
            withPipeliningAssistance: false,
            // No upgrader: this only makes the request decoder keep the bytes that follow
            // an Upgrade request, so a WebSocket tunnel loses none (see ProxyHandler).
            withServerUpgrade: (upgraders: [], completionHandler: { _ in }),
            withErrorHandling: false,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: limits
        )
        try sync.addHandler(
            ProxyHandler(
                settings: settings,
                loop: contexts.context(for: channel.eventLoop),
                peer: peer
            )
        )
    }

    /// HTTP/2 server side: every stream is an exchange of its own `ProxyHandler`, carried
    /// by `HTTP2ServerStreams` without a child channel per stream.
    static func addHTTP2(
        to channel: any Channel,
        settings: ProxySettings,
        contexts: LoopContexts,
        peer: ConnectionPeer? = nil
    ) throws {
        // Limits by trust (DESIGN.md): only the mTLS inbound listener, whose peers are
        // authenticated sidecars, relaxes them. Their apps hang up mid-request all the time,
        // so resets there are normal traffic, not an attack. Every listener facing apps or
        // the public (upstream, http-proxy, gateway) keeps swift-nio-http2's defaults
        // against rapid reset and other glitches (200 per connection; at most 32 recently
        // reset streams remembered; 5 CONTINUATION frames in a row) and 100 concurrent
        // streams, as nginx and most servers announce.
        let trusted = settings.restoresProtocol && peer != nil
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(
                parameter: .maxConcurrentStreams,
                value: trusted ? trustedMaxConcurrentStreams : publicMaxConcurrentStreams
            ),
            HTTP2Setting(parameter: .initialWindowSize, value: streamWindow),
            HTTP2Setting(parameter: .maxHeaderListSize, value: settings.maxHeaderBytes),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        if trusted {
            connection.maximumConnectionGlitches = 100_000
            connection.maximumRecentlyResetStreams = recentlyResetStreamsRemembered
            stream.streamResetFrameRateLimit.maximumCount = 10_000
        }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(FlushCoalescingHandler())
        try sync.addHandler(
            NIOHTTP2Handler(
                mode: .server,
                frameDelegate: nil,
                connectionConfiguration: connection,
                streamConfiguration: stream
            )
        )
        try sync.addHandler(
            HTTP2ServerStreams(
                settings: settings,
                loop: contexts.context(for: channel.eventLoop),
                peer: peer,
                streamWindow: streamWindow
            )
        )
    }

    /// The stream window announced to HTTP/2 clients (and kept topped up).
    static let streamWindow = 1 << 20
    /// SETTINGS_MAX_CONCURRENT_STREAMS for peer sidecars over mTLS and for everyone else.
    static let trustedMaxConcurrentStreams = 1000
    static let publicMaxConcurrentStreams = 100

    /// Cleartext HTTP: h2c with prior knowledge or HTTP/1.x, told apart by the first bytes.
    static func addCleartextHTTP(
        to channel: any Channel,
        settings: ProxySettings,
        contexts: LoopContexts
    ) throws {
        try channel.pipeline.syncOperations.addHandler(
            HTTPVersionSniffer(deadline: settings.headerReadTimeout) { isHTTP2, channel in
                if isHTTP2 {
                    try addHTTP2(to: channel, settings: settings, contexts: contexts)
                } else {
                    try addHTTP1(to: channel, settings: settings, contexts: contexts)
                }
            }
        )
    }

    /// The server side of TLS, with a deadline for its handshake.
    static func addServerTLS(_ tls: NIOSSLServerHandler, to channel: any Channel, settings: ProxySettings) throws {
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(tls)
        try sync.addHandler(
            TLSHandshakeTimeoutHandler(timeout: settings.tlsHandshakeTimeout, metrics: settings.metrics)
        )
    }

    /// TLS (mTLS against the mesh CA), then HTTP/2 or HTTP/1.1 as ALPN decided.
    static func addTLSHTTP(
        to channel: any Channel,
        tls: NIOSSLServerHandler,
        settings: ProxySettings,
        contexts: LoopContexts,
        revoked: Set<String> = []
    ) throws {
        let sync = channel.pipeline.syncOperations
        try addServerTLS(tls, to: channel, settings: settings)
        // The caller's identity, read when the handshake completes, before ALPN builds the
        // HTTP pipeline whose requests are authorized with it.
        let peer = ConnectionPeer()
        try sync.addHandler(PeerIdentityHandler(peer: peer, metrics: settings.metrics, revoked: revoked))
        try sync.addHandler(
            ApplicationProtocolNegotiationHandler { result, channel in
                channel.eventLoop.makeCompletedFuture {
                    switch result {
                    case .negotiated("h2"):
                        try addHTTP2(to: channel, settings: settings, contexts: contexts, peer: peer)
                    default:
                        try addHTTP1(to: channel, settings: settings, contexts: contexts, peer: peer)
                    }
                }
            }
        )
    }

    /// Opaque TCP: splice the connection to an endpoint picked by `pick`, optionally
    /// wrapping the upstream side in TLS; with `afterHandshake` (behind a TLS server handler
    /// and the identity check) the upstream connection waits for the admitted handshake.
    static func addTCPProxy(
        to channel: any Channel,
        metrics: ListenerMetrics,
        connectTimeout: TimeAmount,
        upstreamTLS: PeerTLS?,
        afterHandshake: Bool = false,
        pick: @escaping () -> SocketAddress?
    ) throws {
        let downstream = GlueHandler(activatesOnHandshake: afterHandshake) { downstream, channel in
            guard let address = pick() else {
                metrics.countError(.noHealthyEndpoint)
                channel.close(promise: nil)
                return
            }
            let upstream = GlueHandler()
            ClientBootstrap(group: channel.eventLoop)
                .connectTimeout(connectTimeout)
                .channelInitializer { upstreamChannel in
                    upstreamChannel.eventLoop.makeCompletedFuture {
                        if let upstreamTLS {
                            try upstreamChannel.pipeline.syncOperations.addHandler(
                                try upstreamTLS.makeHandler()
                            )
                        }
                    }
                }
                .connect(to: address)
                .assumeIsolated()
                .whenComplete { result in
                    switch result {
                    case .success(let upstreamChannel):
                        guard channel.isActive else {
                            upstreamChannel.close(promise: nil)
                            return
                        }
                        do {
                            try upstreamChannel.pipeline.syncOperations.addHandler(upstream)
                            GlueHandler.pair(downstream, upstream)
                        } catch {
                            upstreamChannel.close(promise: nil)
                            channel.close(promise: nil)
                        }
                    case .failure(let error):
                        metrics.countError(MeshError(connectError: error))
                        channel.close(promise: nil)
                    }
                }
        }
        try channel.pipeline.syncOperations.addHandler(downstream)
    }
}

import Foundation
import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization

/// The sidecar proxy: its listeners, clusters and admin endpoint, run as a ServiceLifecycle
/// service. On graceful shutdown (SIGTERM) it stops accepting, lets in-flight requests
/// finish for up to `timeouts.drain`, then closes what is left.
public actor Sidecar: Service {
    public let config: SidecarConfig
    let group: any EventLoopGroup
    let registry: PrometheusCollectorRegistry
    let logger: Logger
    /// The mTLS material for mesh hops (nil: mesh hops are h2c/plain TCP): static files, or
    /// the workload certificate the identity agent installs and renews.
    public nonisolated let meshTLS: MeshTLSSource?
    let contexts: LoopContexts
    /// Requests, status classes and latency per edge (caller or callee service).
    public nonisolated let edges: EdgeTelemetry
    /// The listeners' and clusters' latency histograms, sharded per event loop.
    let histograms: LatencyHistograms
    /// Where access log lines go (nil: no access log).
    let accessLogFile: AccessLogFile?
    /// Who is tapping this sidecar's requests (admin `/tap`).
    public nonisolated let taps: TapHub
    /// Finished spans waiting for the trace exporter (nil: tracing is off).
    public nonisolated let spans: SpanCollector?
    var clusterMetricsByName: [String: ClusterMetrics]
    /// The HTTPS gateway listeners' certificates, by listener name.
    let gatewayTLS: [String: GatewayTLS]
    /// The bearer token for the admin `/config` and `/tap` (nil: only the controller).
    let adminToken: String?
    /// The gateway listeners as last applied (start, then every reload).
    var gatewayListeners: [GatewayListenerConfig]
    /// Services whose clusters discovery fills: the config's, plus any a reload added.
    public internal(set) var discovered: [String]
    let flags: SidecarFlags
    var listeners: [(name: String, channel: any Channel, quiesce: ServerQuiescingHelper?)] = []
    /// Listeners bound but not accepting until the first discovery state is applied (or
    /// `controller.startupWait` has passed without one).
    var gatedListeners: [any Channel] = []

    /// Builds everything that can be checked before binding: TLS files, endpoint addresses,
    /// metrics and the per-loop clusters. Throws `ConfigErrors` naming the bad field.
    public init(
        config: SidecarConfig,
        group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry,
        logger: Logger
    ) throws(ConfigErrors) {
        self.config = config
        self.group = group
        self.registry = registry
        self.logger = logger
        if let files = config.tls {
            self.meshTLS = MeshTLSSource(try MeshTLS(files: files), logger: logger)
        } else if config.controller?.usesWorkloadIdentity == true {
            self.meshTLS = MeshTLSSource(nil, logger: logger)
        } else {
            self.meshTLS = nil
        }
        self.flags = SidecarFlags(
            discoveryExpected: config.controller != nil && (!config.discover.isEmpty || config.inbound != nil),
            identity: config.tls != nil || config.controller?.usesWorkloadIdentity == true ? meshTLS : nil
        )

        var errors: [ConfigError] = []
        var resolved: [String: [SocketAddress]] = [:]
        for (index, cluster) in config.clusters.enumerated() {
            resolved[cluster.name] = cluster.endpoints.enumerated().compactMap { e, endpoint in
                do {
                    return try SocketAddress.makeAddressResolvingHost(
                        endpoint.address.host,
                        port: endpoint.address.port
                    )
                } catch {
                    errors.append(
                        ConfigError(
                            path: "clusters[\(index)].endpoints[\(e)]",
                            reason: "cannot resolve \(endpoint.address): \(error)"
                        )
                    )
                    return nil
                }
            }
        }
        var appAddress: SocketAddress?
        if let inbound = config.inbound {
            do {
                appAddress = try SocketAddress.makeAddressResolvingHost(inbound.app.host, port: inbound.app.port)
            } catch {
                errors.append(ConfigError(path: "inbound.app", reason: "cannot resolve \(inbound.app): \(error)"))
            }
        }
        var gatewayTLS: [String: GatewayTLS] = [:]
        for (index, listener) in config.listeners.enumerated() where listener.protocol == .https {
            do {
                gatewayTLS[listener.name] = try GatewayTLS(
                    certificates: listener.certificates,
                    path: "listeners[\(index)]"
                )
            } catch {
                errors += error.errors
            }
        }
        var accessLogFile: AccessLogFile?
        if let target = config.accessLog {
            do {
                accessLogFile = try AccessLogFile(target)
            } catch {
                errors += error.errors
            }
        }
        var adminToken: String?
        if let file = config.adminTokenFile {
            do {
                adminToken = try SecretFile.token(at: file, create: true)
            } catch {
                errors.append(ConfigError(path: "adminTokenFile", reason: error.description))
            }
        }
        guard errors.isEmpty else { throw ConfigErrors(errors) }
        self.adminToken = adminToken
        self.accessLogFile = accessLogFile
        self.gatewayTLS = gatewayTLS
        self.gatewayListeners = config.listeners
        self.discovered = config.discover

        let loops = Array(group.makeIterator())
        let histograms = LatencyHistograms(loops: loops.count)
        self.histograms = histograms
        let clusterMetrics = Dictionary(
            uniqueKeysWithValues: config.allClusters.map {
                (
                    $0.name,
                    ClusterMetrics(
                        name: $0.name,
                        endpoints: $0.endpoints.map(\.address.description),
                        registry: registry,
                        histograms: histograms
                    )
                )
            }
        )
        self.clusterMetricsByName = clusterMetrics
        let appMetrics = config.inbound.map {
            ClusterMetrics(name: "app", endpoints: [$0.app.description], registry: registry, histograms: histograms)
        }
        let tls = self.meshTLS
        let authorizationMetrics = AuthorizationMetrics(target: config.service, registry: registry)
        var loopContexts: [LoopContext] = []
        let edges = EdgeTelemetry(loops: loops.count)
        self.edges = edges
        let spans =
            config.tracing.isEnabled
            ? SpanCollector(loops: loops.count, capacity: config.tracing.maxBufferedSpans) : nil
        self.spans = spans
        var seeds = SystemRandomNumberGenerator()
        let appCluster = config.inbound.map { Self.appClusterConfig($0) }
        for (index, loop) in loops.enumerated() {
            let context = LoopContext(loop: loop, index: index)
            context.logger = logger
            context.inbound.awaitingAuthorization = config.controller != nil && config.inbound != nil
            context.edges = config.edgeTelemetry ? edges.shards[index] : nil
            context.service = config.service
            if let spans {
                context.tracer = LoopTracer(
                    sampleRate: config.tracing.sampleRate,
                    shard: spans.shards[index],
                    seed: seeds.next()
                )
            }
            context.accessLog = accessLogFile.map { AccessLogWriter(file: $0, loop: loop) }
            for cluster in config.allClusters {
                context.clusters[cluster.name] = LoopCluster(
                    config: cluster,
                    addresses: resolved[cluster.name] ?? [],
                    zone: config.zone,
                    tls: tls,
                    loop: loop,
                    loopIndex: index,
                    loopCount: loops.count,
                    metrics: clusterMetrics[cluster.name]!,
                    logger: logger
                )
            }
            if let inbound = config.inbound, let appCluster, let appAddress, let appMetrics, inbound.protocol != .tcp {
                context.app = LoopCluster(
                    config: appCluster,
                    addresses: [appAddress],
                    zone: nil,
                    tls: nil,
                    loop: loop,
                    loopIndex: index,
                    loopCount: loops.count,
                    metrics: appMetrics,
                    logger: logger
                )
            }
            for listener in config.listeners {
                context.gatewayRoutes[listener.name] = listener.routes
            }
            if let inbound = config.inbound {
                context.inbound.metrics = authorizationMetrics
                let now = loop.now.uptimeNanoseconds
                let share = LoopShare(loops: loops.count)
                context.inbound.concurrencyLimiter = inbound.concurrencyLimit.map {
                    GradientConcurrencyLimiter(policy: share.of($0), now: now)
                }
                context.inbound.rateLimit = inbound.rateLimit.map {
                    TokenBucket(
                        rate: share.of($0.requestsPerSecond),
                        burst: max(1, share.of(Double($0.burst))),
                        now: now
                    )
                }
            }
            loopContexts.append(context)
        }
        self.contexts = LoopContexts(loopContexts)
        self.taps = TapHub(contexts: self.contexts)
        self.appAddress = appAddress
    }

    let appAddress: SocketAddress?

    // What discovery last applied (Sidecar+Discovery), so an unchanged state costs nothing.
    var appliedRequireMTLS = false
    var appliedClusters: [String: ClusterConfig] = [:]
    var appliedAuthorization: AuthorizationTable?
    /// The routes applied, by parent service, and the route backends that are subsets of
    /// a service (their clusters are named `service~labels`), by cluster name.
    var appliedRoutes: [String: [HTTPRoute]] = [:]
    var subsetBackends: [String: RouteBackend] = [:]
    /// Asks discovery to watch more services (a route's backends); set by the agent's owner.
    public var watchMore: (@Sendable ([String]) async -> Void)?

    public func setWatchMore(_ body: @escaping @Sendable ([String]) async -> Void) {
        watchMore = body
    }

    /// Services watched only because a route named them (`watchMore`), dropped again when
    /// no route does (`watchLess`).
    var routeServices: Set<String> = []
    public var watchLess: (@Sendable ([String]) async -> Void)?

    public func setWatchLess(_ body: @escaping @Sendable ([String]) async -> Void) {
        watchLess = body
    }

    /// The local app as a cluster of one: no outlier ejection (there is nowhere else to
    /// go) and retries only when the connection could not be made.
    static func appClusterConfig(_ inbound: InboundConfig) -> ClusterConfig {
        var cluster = ClusterConfig(name: "app")
        cluster.endpoints = [EndpointConfig(address: inbound.app)]
        cluster.protocol = inbound.protocol == .h2c ? .h2c : .http1
        cluster.connectTimeout = inbound.connectTimeout
        cluster.requestTimeout = inbound.requestTimeout
        cluster.maxIdleConnections = inbound.maxIdleConnections
        cluster.balancer = .roundRobin
        cluster.outlierDetection = nil
        cluster.retries.on = [.connectFailure]
        return cluster
    }

    /// Where each listener is bound, by name (`admin`, `inbound`, `http_proxy`,
    /// `upstream:<cluster>`), with the real port when the config said 0.
    /// What `--check` validates beyond the file's fields: the files a start loads (the
    /// mesh TLS certificate, key and CA bundle; each https gateway listener's certificates)
    /// exist, parse and make a TLS context (a key that does not match its certificate
    /// fails here), so a config that passes `--check` starts.
    public static func checkFiles(_ config: SidecarConfig) throws(ConfigErrors) {
        var errors: [ConfigError] = []
        if let files = config.tls {
            do {
                _ = try MeshTLS(files: files)
            } catch {
                errors += error.errors
            }
        }
        for (index, listener) in config.listeners.enumerated() where listener.protocol == .https {
            do {
                _ = try GatewayTLS(certificates: listener.certificates, path: "listeners[\(index)]")
            } catch {
                errors += error.errors
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors) }
    }

    public var boundAddresses: [String: SocketAddress] {
        var result: [String: SocketAddress] = [:]
        for listener in listeners {
            if let address = listener.channel.localAddress { result[listener.name] = address }
        }
        return result
    }

    public nonisolated var isReady: Bool { flags.readiness.isReady }

    /// The id this sidecar's instance is registered under (the discovery agent sets it):
    /// its rank among its service's instances places it in deterministic subsets.
    public private(set) var instanceID: String?

    public func setInstanceID(_ id: String) {
        instanceID = id
    }

    /// What `/ready` reports and `meshwork run` waits for.
    public nonisolated var readiness: Readiness { flags.readiness }

    /// The controller confirmed the discovery state (a snapshot, an event or a ping), or
    /// the cache it starts from was written at `date`: the origin of
    /// `meshwork_discovery_state_age_seconds`.
    public nonisolated func discoveryConfirmed(at date: Date = Date()) {
        flags.confirmedAtMillis.store(Int64(date.timeIntervalSince1970 * 1000), ordering: .relaxed)
    }

    /// Binds every listener. Throws if a port cannot be bound (the error names the listener).
    public func start() async throws {
        do {
            for listener in makeListeners() {
                try await bind(listener)
            }
        } catch {
            await closeListeners()
            throw error
        }
        flags.started.store(true, ordering: .relaxed)
        if !gatedListeners.isEmpty, let wait = config.controller?.startupWait {
            // Without a state (no cache, the controller unreachable), accept after the wait
            // anyway: requests then get the mesh's own answers (`no_healthy_endpoint`,
            // `not_ready`) rather than hang.
            Task { [weak self] in
                try? await Task.sleep(for: wait.duration)
                await self?.startupWaitEnded()
            }
        }
        for listener in listeners {
            logger.info(
                "listening",
                metadata: [
                    "listener": "\(listener.name)",
                    "address": "\(listener.channel.localAddress.map { "\($0)" } ?? "?")",
                ]
            )
        }
    }

    /// The listeners the config asks for, in the order they are bound.
    private func makeListeners() -> [any SidecarListener] {
        let contexts = self.contexts
        var made: [any SidecarListener] = []
        if let inbound = config.inbound {
            made.append(
                InboundListener(
                    address: inbound.listen,
                    appProtocol: inbound.protocol,
                    settings: settings("inbound", kind: "inbound", route: .app, restores: true),
                    tls: meshTLS,
                    contexts: contexts,
                    appAddress: appAddress,
                    connectTimeout: .nanoseconds(inbound.connectTimeout.nanoseconds)
                )
            )
        }
        if let httpProxy = config.httpProxy {
            made.append(
                HTTPProxyListener(
                    address: httpProxy.listen,
                    settings: settings(
                        "http_proxy",
                        kind: "http_proxy",
                        route: .host(domain: httpProxy.domain),
                        restores: false
                    ),
                    contexts: contexts
                )
            )
        }
        var usedNames: Set<String> = []
        for upstream in config.upstreams {
            var name = "upstream:\(upstream.cluster)"
            if usedNames.contains(name) { name += ":\(upstream.listen.port)" }
            usedNames.insert(name)
            let target = tcpTarget(upstream.cluster)
            let cluster = config.allClusters.first { $0.name == upstream.cluster }
            made.append(
                UpstreamListener(
                    name: name,
                    address: upstream.listen,
                    listenerProtocol: upstream.protocol,
                    settings: settings(name, kind: "upstream", route: .cluster(upstream.cluster), restores: false),
                    contexts: contexts,
                    target: target,
                    plaintextMesh: target.tls == nil
                        && (cluster ?? ClusterConfig.discovered(upstream.cluster)).protocol == .mesh
                )
            )
        }
        for listener in config.listeners {
            let name = "gateway:\(listener.name)"
            let kind: GatewayListener.Kind
            switch listener.protocol {
            case .http:
                kind = .http
            case .https:
                guard let tls = gatewayTLS[listener.name] else { continue }
                kind = .https(tls)
            case .tcp:
                guard let service = listener.service else { continue }
                kind = .tcp(tcpTarget(service))
            }
            made.append(
                GatewayListener(
                    name: name,
                    address: listener.listen,
                    kind: kind,
                    settings: settings(
                        name,
                        kind: "gateway",
                        route: .gateway(listener: listener.name),
                        restores: false
                    ),
                    contexts: contexts
                )
            )
        }
        if let admin = config.admin {
            made.append(
                AdminListener(
                    address: admin,
                    endpoints: adminEndpoints(),
                    tls: meshTLS,
                    settings: settings("admin", kind: "admin", route: .app, restores: false)
                )
            )
        }
        return made
    }

    /// A listener's settings and metrics.
    private func settings(_ name: String, kind: String, route: ProxyRoute, restores: Bool) -> ProxySettings {
        let timeouts = config.timeouts
        return ProxySettings(
            route: route,
            metrics: ListenerMetrics(
                name: name,
                kind: kind,
                registry: registry,
                histograms: histograms,
                maxConnections: config.limits.maxConnections
            ),
            headerReadTimeout: .nanoseconds(timeouts.headerRead.nanoseconds),
            tlsHandshakeTimeout: .nanoseconds(timeouts.tlsHandshake.nanoseconds),
            idleTimeout: .nanoseconds(timeouts.idle.nanoseconds),
            keepAliveInterval: .nanoseconds(timeouts.keepAlive.nanoseconds),
            maxHeaderBytes: config.limits.maxHeaderBytes,
            restoresProtocol: restores
        )
    }

    /// Lets the gated listeners accept (once).
    func openGatedListeners(because reason: String) {
        guard !gatedListeners.isEmpty else { return }
        for channel in gatedListeners {
            channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        gatedListeners.removeAll()
        logger.info("accepting", metadata: ["reason": "\(reason)"])
    }

    private func startupWaitEnded() {
        guard !gatedListeners.isEmpty else { return }
        logger.warning(
            "no discovery state yet (no cache, the controller unreachable): accepting anyway",
            metadata: ["startupWait": "\(config.controller?.startupWait.description ?? "")"]
        )
        openGatedListeners(because: "startup wait over")
    }

    /// How a TCP listener reaches `cluster`: mTLS checking the peer's identity for `mesh`
    /// clusters, and the cluster's connect timeout.
    private func tcpTarget(_ clusterName: String) -> ClusterTCPTarget {
        let cluster = config.allClusters.first { $0.name == clusterName } ?? ClusterConfig.discovered(clusterName)
        let tls =
            cluster.protocol == .mesh
            ? self.meshTLS.map {
                PeerTLS(
                    source: $0,
                    purpose: .tcp,
                    peerService: cluster.name,
                    metrics: clusterMetricsByName[cluster.name]
                )
            } : nil
        return ClusterTCPTarget(
            cluster: clusterName,
            tls: tls,
            connectTimeout: .nanoseconds(cluster.connectTimeout.nanoseconds)
        )
    }

    private func adminEndpoints() -> AdminEndpoints {
        let registry = self.registry
        let configJSON: [UInt8]
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            configJSON = Array(try encoder.encode(config)) + [0x0A]
        } catch {
            configJSON = Array("{\"error\": \"cannot encode config\"}\n".utf8)
        }
        let flags = self.flags
        return AdminEndpoints(
            metrics: { [edges, accessLogFile, histograms, taps] in
                var text = registry.emitToBuffer() + histograms.prometheusText() + edges.prometheusText()
                text += Array(
                    """
                    # HELP meshwork_tap_subscribers Taps reading this sidecar's requests now (admin /tap).
                    # TYPE meshwork_tap_subscribers gauge
                    meshwork_tap_subscribers \(taps.count)

                    """.utf8
                )
                if flags.discoveryExpected {
                    let confirmed = flags.confirmedAtMillis.load(ordering: .relaxed)
                    let age = confirmed == 0 ? -1 : max(0, Date().timeIntervalSince1970 - Double(confirmed) / 1000)
                    text += Array(
                        """
                        # HELP meshwork_discovery_state_age_seconds Seconds since the controller last confirmed the discovery state this sidecar routes on (its watch's last line, or when the cache it started from was written); -1 before any state.
                        # TYPE meshwork_discovery_state_age_seconds gauge
                        meshwork_discovery_state_age_seconds \(String(format: "%.3f", age))

                        """.utf8
                    )
                }
                if let accessLogFile {
                    text += Array(
                        """
                        # HELP meshwork_access_log_dropped_bytes_total Access log bytes dropped because the writes fell 8 MiB behind.
                        # TYPE meshwork_access_log_dropped_bytes_total counter
                        meshwork_access_log_dropped_bytes_total \(accessLogFile.droppedBytes.load(ordering: .relaxed))

                        """.utf8
                    )
                }
                return text
            },
            config: { configJSON },
            readiness: { flags.readiness },
            taps: taps,
            token: adminToken
        )
    }

    private func bind(_ listener: any SidecarListener) async throws {
        let helper = listener.carriesTraffic ? ServerQuiescingHelper(group: group) : nil
        // Traffic listeners of a sidecar that expects discovery wait for its first state:
        // bound (their ports are known), callers queued in the backlog, nothing accepted.
        // The admin listener answers probes at once.
        let gated =
            listener.carriesTraffic && flags.discoveryExpected && !flags.discoveryApplied.load(ordering: .relaxed)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.autoRead, value: !gated)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let helper {
                        try channel.pipeline.syncOperations.addHandler(
                            helper.makeServerChannelHandler(channel: channel)
                        )
                    }
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionMetricsHandler(metrics: listener.settings.metrics)
                    )
                    try listener.initializeConnection(channel)
                }
            }
        let address = listener.address
        do {
            let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
            listeners.append((listener.name, channel, helper))
            if gated { gatedListeners.append(channel) }
        } catch {
            throw ListenerBindError(listener: listener.name, address: address, underlying: error)
        }
    }

    private func closeListeners() async {
        for listener in listeners {
            try? await listener.channel.close()
        }
        listeners.removeAll()
    }

    /// Stops accepting, lets in-flight exchanges finish for up to `timeouts.drain`, then
    /// closes whatever is left.
    public func drain() async {
        guard !flags.draining.exchange(true, ordering: .relaxed) else { return }
        logger.info("draining", metadata: ["timeout": "\(config.timeouts.drain)"])
        let loop = group.next()
        let quiesced = listeners.compactMap { listener -> EventLoopFuture<Void>? in
            guard let helper = listener.quiesce else { return nil }
            let promise = loop.makePromise(of: Void.self)
            helper.initiateShutdown(promise: promise)
            return promise.futureResult
        }
        let all = EventLoopFuture.andAllComplete(quiesced, on: loop)
        // Done when every connection has finished, or when the drain timeout fires.
        let timeout = TimeAmount.nanoseconds(config.timeouts.drain.nanoseconds)
        let deadline = loop.scheduleTask(in: timeout) {}
        all.whenComplete { _ in deadline.cancel() }
        _ = try? await deadline.futureResult.get()
        let contexts = self.contexts
        for index in contexts.all.indices {
            try? await contexts.all[index].loop.submit { contexts.all[index].closeIdle() }.get()
        }
        await closeListeners()
        logger.info("drained")
    }

    /// ServiceLifecycle entry point: start, serve until graceful shutdown, drain.
    public func run() async throws {
        if !flags.started.load(ordering: .relaxed) {
            try await start()
        }
        try? await gracefulShutdown()
        await drain()
    }
}

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
    private let group: any EventLoopGroup
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger
    /// The mTLS material for mesh hops (nil: mesh hops are h2c/plain TCP): static files, or
    /// the workload certificate the identity agent installs and renews.
    public nonisolated let meshTLS: MeshTLSSource?
    private let contexts: LoopContexts
    /// Requests, status classes and latency per edge (caller or callee service).
    public nonisolated let edges: EdgeTelemetry
    /// The listeners' and clusters' latency histograms, sharded per event loop.
    private let histograms: LatencyHistograms
    /// Where access log lines go (nil: no access log).
    private let accessLogFile: AccessLogFile?
    /// Who is tapping this sidecar's requests (admin `/tap`).
    public nonisolated let taps: TapHub
    /// Finished spans waiting for the trace exporter (nil: tracing is off).
    public nonisolated let spans: SpanCollector?
    private var clusterMetricsByName: [String: ClusterMetrics]
    /// The HTTPS gateway listeners' certificates, by listener name.
    private let gatewayTLS: [String: GatewayTLS]
    /// The bearer token for the admin `/config` and `/tap` (nil: only the controller).
    private let adminToken: String?
    /// The gateway listeners as last applied (start, then every reload).
    private var gatewayListeners: [GatewayListenerConfig]
    /// Services whose clusters discovery fills: the config's, plus any a reload added.
    public private(set) var discovered: [String]
    private let flags: Flags
    private var listeners: [(name: String, channel: any Channel, quiesce: ServerQuiescingHelper?)] = []
    /// Listeners bound but not accepting until the first discovery state is applied (or
    /// `controller.startupWait` has passed without one).
    private var gatedListeners: [any Channel] = []

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
        self.flags = Flags(
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

    private let appAddress: SocketAddress?

    /// Applies what discovery knows to the clusters of `discover`: each gets the serving
    /// instances of its service (healthy, weight above 0) and the service's traffic policy,
    /// on every event loop, without dropping connections or in-flight requests. Instances
    /// whose address does not resolve are left out (and logged).
    public func apply(_ state: DiscoveryState) async {
        var updates: [EventLoopFuture<Void>] = []
        applyMTLSRequirement(state.mesh, &updates)
        applyAuthorization(state, &updates)
        // This sidecar's place among its own service's instances (every one registered,
        // whatever its health: callers, not backends), for subsetting.
        // Not registered yet: placed where it will be once it is.
        var peers = state.instances.values.filter { $0.service == config.service }.map(\.id)
        if let instanceID, !peers.contains(instanceID) { peers.append(instanceID) }
        peers.sort()
        let rank = instanceID.flatMap { peers.firstIndex(of: $0) }
        for name in discovered {
            var cluster = ClusterConfig.discovered(name)
            if let service = state.services[name] { cluster.policy = service.policy }
            var addresses: [SocketAddress] = []
            for instance in state.servingInstances(of: name) {
                do {
                    let address = try SocketAddress.makeAddressResolvingHost(instance.address, port: instance.port)
                    addresses.append(address)
                    cluster.endpoints.append(
                        EndpointConfig(
                            address: HostPort(host: instance.address, port: instance.port),
                            weight: Double(instance.weight),
                            zone: instance.zone
                        )
                    )
                } catch {
                    logger.warning(
                        "instance address does not resolve",
                        metadata: ["instance": "\(instance.id)", "address": "\(instance.address)"]
                    )
                }
            }
            if let size = state.services[name]?.policy.subsetSize, let rank, size < cluster.endpoints.count {
                // Backends in the stable order of their ids (servingInstances sorts them).
                cluster.subset = SubsetConfig(size: size, clientIndex: rank, clientCount: peers.count)
            }
            for instance in state.instances.values where instance.service == name && !instance.isServing {
                if let zone = instance.zone { cluster.unservedWeights[zone, default: 0] += Double(instance.weight) }
            }
            if appliedClusters[name] == cluster { continue }
            appliedClusters[name] = cluster
            logger.info(
                "cluster updated",
                metadata: [
                    "cluster": "\(name)", "endpoints": "\(cluster.endpoints.count)", "revision": "\(state.revision)",
                ]
            )
            let contexts = self.contexts
            for (index, context) in contexts.all.enumerated() {
                let update = cluster
                let resolved = addresses
                updates.append(
                    context.loop.submit {
                        contexts.all[index].clusters[name]?.update(update, addresses: resolved)
                    }
                )
            }
        }
        guard !flags.discoveryApplied.load(ordering: .relaxed) else { return }
        // The first state: on every loop before a listener accepts, so no request meets
        // the empty clusters of a sidecar that has only just started.
        for update in updates { try? await update.get() }
        flags.discoveryApplied.store(true, ordering: .relaxed)
        openGatedListeners(because: "first discovery state applied")
    }

    /// Lets the gated listeners accept (once).
    private func openGatedListeners(because reason: String) {
        guard !gatedListeners.isEmpty else { return }
        for channel in gatedListeners {
            channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        gatedListeners.removeAll()
        logger.info("accepting", metadata: ["reason": "\(reason)"])
    }

    private var appliedRequireMTLS = false

    /// The revoked certificates changed: pooled connections to peers are retired, so every
    /// later request goes over a new handshake, which checks the list.
    public func retirePeerConnections() {
        let contexts = self.contexts
        for context in contexts.all {
            context.loop.execute {
                for cluster in context.clusters.values { cluster.retireConnections() }
            }
        }
    }

    /// The mesh-wide mTLS requirement onto every loop.
    private func applyMTLSRequirement(_ mesh: MeshSettings, _ updates: inout [EventLoopFuture<Void>]) {
        guard mesh.requireMTLS != appliedRequireMTLS else { return }
        appliedRequireMTLS = mesh.requireMTLS
        if mesh.requireMTLS, meshTLS == nil {
            logger.error(
                "the mesh requires mTLS and this sidecar has no identity (no join token, no TLS files): every mesh hop is refused"
            )
        } else {
            logger.info("mesh mTLS requirement", metadata: ["requireMTLS": "\(mesh.requireMTLS)"])
        }
        let required = mesh.requireMTLS
        let contexts = self.contexts
        for (index, context) in contexts.all.enumerated() {
            updates.append(context.loop.submit { contexts.all[index].requireMTLS = required })
        }
    }

    private var appliedClusters: [String: ClusterConfig] = [:]
    private var appliedAuthorization: AuthorizationTable?

    /// The authorization policies that target this service, and the mesh default, onto
    /// every loop.
    private func applyAuthorization(_ state: DiscoveryState, _ updates: inout [EventLoopFuture<Void>]) {
        guard config.inbound != nil else { return }
        let table = AuthorizationTable(service: config.service, policies: state.policies.values, mesh: state.mesh)
        guard table != appliedAuthorization else { return }
        appliedAuthorization = table
        logger.info(
            "authorization updated",
            metadata: [
                "policies": "\(state.policies.values.filter { $0.target == config.service }.count)",
                "default": "\(state.mesh.defaultAuthorization.rawValue)",
            ]
        )
        let contexts = self.contexts
        for (index, context) in contexts.all.enumerated() {
            updates.append(
                context.loop.submit {
                    contexts.all[index].inbound.authorization = table
                    contexts.all[index].inbound.awaitingAuthorization = false
                }
            )
        }
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
        let timeouts = config.timeouts
        func settings(_ name: String, kind: String, route: ProxyRoute, restores: Bool) -> ProxySettings {
            ProxySettings(
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
        let contexts = self.contexts
        do {
            if let inbound = config.inbound {
                let proxy = settings("inbound", kind: "inbound", route: .app, restores: true)
                let tls = self.meshTLS
                let source = tls
                let appAddress = self.appAddress
                let connectTimeout = TimeAmount.nanoseconds(inbound.connectTimeout.nanoseconds)
                try await bind("inbound", inbound.listen) { channel in
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                    // Strict mTLS when the sidecar has TLS: without a certificate yet, the
                    // connection is refused rather than served in plaintext.
                    let serverTLS = tls?.serverHandler()
                    if tls != nil, serverTLS == nil {
                        throw MeshTLSUnavailable()
                    }
                    if serverTLS == nil, contexts.context(for: channel.eventLoop).requireMTLS {
                        proxy.metrics.countError(.mtlsRequired)
                        throw MeshError.mtlsRequired
                    }
                    switch (inbound.protocol, serverTLS) {
                    case (.tcp, let serverTLS):
                        // A TCP caller is authorized once, by identity and port, when its
                        // handshake completes (or at once when there is no TLS).
                        let loopContext = contexts.context(for: channel.eventLoop)
                        let port = channel.localAddress?.port ?? 0
                        if let serverTLS {
                            try ListenerPipelines.addServerTLS(serverTLS, to: channel, settings: proxy)
                            try sync.addHandler(
                                PeerIdentityHandler(
                                    peer: ConnectionPeer(),
                                    metrics: proxy.metrics,
                                    revoked: tls?.revokedSerials ?? []
                                ) { identity, _ in
                                    let allowed = loopContext.inbound.authorize(
                                        source: identity,
                                        port: port,
                                        method: nil,
                                        path: nil
                                    )
                                    if !allowed { proxy.metrics.countError(.unauthorized) }
                                    return allowed
                                }
                            )
                        } else if !loopContext.inbound.authorize(source: nil, port: port, method: nil, path: nil) {
                            proxy.metrics.countError(.unauthorized)
                            throw MeshError.unauthorized
                        }
                        try ListenerPipelines.addTCPProxy(
                            to: channel,
                            metrics: proxy.metrics,
                            connectTimeout: connectTimeout,
                            upstreamTLS: nil,
                            afterHandshake: serverTLS != nil,
                            pick: { appAddress }
                        )
                    case (_, .some(let tls)):
                        try ListenerPipelines.addTLSHTTP(
                            to: channel,
                            tls: tls,
                            settings: proxy,
                            contexts: contexts,
                            revoked: source?.revokedSerials ?? []
                        )
                    case (_, .none):
                        try ListenerPipelines.addCleartextHTTP(to: channel, settings: proxy, contexts: contexts)
                    }
                }
            }
            if let httpProxy = config.httpProxy {
                let proxy = settings(
                    "http_proxy",
                    kind: "http_proxy",
                    route: .host(domain: httpProxy.domain),
                    restores: false
                )
                try await bind("http_proxy", httpProxy.listen) { channel in
                    try channel.pipeline.syncOperations.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                    try ListenerPipelines.addCleartextHTTP(to: channel, settings: proxy, contexts: contexts)
                }
            }
            var usedNames: Set<String> = []
            for upstream in config.upstreams {
                var name = "upstream:\(upstream.cluster)"
                if usedNames.contains(name) { name += ":\(upstream.listen.port)" }
                usedNames.insert(name)
                let proxy = settings(name, kind: "upstream", route: .cluster(upstream.cluster), restores: false)
                let (upstreamTLS, connectTimeout) = tcpUpstream(upstream.cluster)
                let clusterName = upstream.cluster
                let plaintextMesh =
                    upstreamTLS == nil
                    && (config.allClusters.first { $0.name == clusterName } ?? ClusterConfig.discovered(clusterName))
                        .protocol == .mesh
                try await bind(name, upstream.listen) { channel in
                    try channel.pipeline.syncOperations.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                    switch upstream.protocol {
                    case .http:
                        try ListenerPipelines.addCleartextHTTP(to: channel, settings: proxy, contexts: contexts)
                    case .tcp:
                        if plaintextMesh, contexts.context(for: channel.eventLoop).requireMTLS {
                            proxy.metrics.countError(.mtlsRequired)
                            throw MeshError.mtlsRequired
                        }
                        try Self.addClusterTCPProxy(
                            to: channel,
                            cluster: clusterName,
                            contexts: contexts,
                            metrics: proxy.metrics,
                            upstream: (upstreamTLS, connectTimeout)
                        )
                    }
                }
            }
            for listener in config.listeners {
                try await bindGateway(listener, settings: settings)
            }
            if let admin = config.admin {
                let endpoints = adminEndpoints()
                let tls = self.meshTLS
                let adminMetrics = settings("admin", kind: "admin", route: .app, restores: false)
                try await bind("admin", admin, quiesce: false) { channel in
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionMetricsHandler(metrics: adminMetrics.metrics)
                    )
                    try AdminHandler.addPipeline(to: channel, endpoints: endpoints, tls: tls, settings: adminMetrics)
                }
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
    private func tcpUpstream(_ clusterName: String) -> (PeerTLS?, TimeAmount) {
        let cluster = config.allClusters.first { $0.name == clusterName } ?? ClusterConfig.discovered(clusterName)
        let upstreamTLS =
            cluster.protocol == .mesh
            ? self.meshTLS.map {
                PeerTLS(
                    source: $0,
                    purpose: .tcp,
                    peerService: cluster.name,
                    metrics: clusterMetricsByName[cluster.name]
                )
            } : nil
        return (upstreamTLS, TimeAmount.nanoseconds(cluster.connectTimeout.nanoseconds))
    }

    /// Opaque TCP to an endpoint of `cluster` picked by this loop's balancer.
    private static func addClusterTCPProxy(
        to channel: any Channel,
        cluster: String,
        contexts: LoopContexts,
        metrics: ListenerMetrics,
        upstream: (tls: PeerTLS?, connectTimeout: TimeAmount)
    ) throws {
        let loopCluster = contexts.context(for: channel.eventLoop).clusters[cluster]
        try ListenerPipelines.addTCPProxy(
            to: channel,
            metrics: metrics,
            connectTimeout: upstream.connectTimeout,
            upstreamTLS: upstream.tls,
            pick: { loopCluster?.pickEndpoint() }
        )
    }

    /// A gateway listener: HTTP or HTTPS routed per request by the loop's route table, or
    /// TCP to one service.
    private func bindGateway(
        _ listener: GatewayListenerConfig,
        settings: (String, String, ProxyRoute, Bool) -> ProxySettings
    ) async throws {
        let name = "gateway:\(listener.name)"
        let proxy = settings(name, "gateway", .gateway(listener: listener.name), false)
        let contexts = self.contexts
        switch listener.protocol {
        case .http:
            try await bind(name, listener.listen) { channel in
                try channel.pipeline.syncOperations.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                try ListenerPipelines.addCleartextHTTP(to: channel, settings: proxy, contexts: contexts)
            }
        case .https:
            guard let tls = gatewayTLS[listener.name] else { return }
            try await bind(name, listener.listen) { channel in
                try channel.pipeline.syncOperations.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                guard let handler = tls.serverHandler() else { throw MeshTLSUnavailable() }
                try ListenerPipelines.addTLSHTTP(to: channel, tls: handler, settings: proxy, contexts: contexts)
            }
        case .tcp:
            guard let service = listener.service else { return }
            let (upstreamTLS, connectTimeout) = tcpUpstream(service)
            try await bind(name, listener.listen) { channel in
                try channel.pipeline.syncOperations.addHandler(ConnectionMetricsHandler(metrics: proxy.metrics))
                try Self.addClusterTCPProxy(
                    to: channel,
                    cluster: service,
                    contexts: contexts,
                    metrics: proxy.metrics,
                    upstream: (upstreamTLS, connectTimeout)
                )
            }
        }
    }

    /// Applies changed gateway listeners without dropping a connection: new routes on
    /// every loop, reloaded certificates for the next handshakes, and a cluster for each
    /// service newly routed to (returned: discovery must start watching them). A listener
    /// added, removed, moved or changed in protocol needs a restart and is refused here.
    public func reload(listeners: [GatewayListenerConfig]) throws(ConfigErrors) -> [String] {
        var errors: [ConfigError] = []
        let current = Dictionary(uniqueKeysWithValues: gatewayListeners.map { ($0.name, $0) })
        if Set(listeners.map(\.name)) != Set(current.keys) {
            errors.append(ConfigError(path: "listeners", reason: "adding or removing a listener needs a restart"))
        }
        for (index, listener) in listeners.enumerated() {
            guard let old = current[listener.name] else { continue }
            if old.listen != listener.listen || old.protocol != listener.protocol {
                errors.append(
                    ConfigError(
                        path: "listeners[\(index)]",
                        reason: "changing a listener's address or protocol needs a restart"
                    )
                )
            } else if listener.protocol == .tcp, old.service != listener.service {
                errors.append(
                    ConfigError(
                        path: "listeners[\(index)].service",
                        reason: "changing a tcp listener's service needs a restart"
                    )
                )
            }
        }
        guard errors.isEmpty else { throw ConfigErrors(errors) }
        for (index, listener) in listeners.enumerated() where listener.protocol == .https {
            if listener.certificates != current[listener.name]?.certificates {
                try gatewayTLS[listener.name]?.reload(certificates: listener.certificates, path: "listeners[\(index)]")
            }
        }
        let known = Set(config.clusters.map(\.name)).union(discovered)
        let added = Array(Set(listeners.flatMap(\.services)).subtracting(known)).sorted()
        addDiscoveredClusters(added)
        gatewayListeners = listeners
        let contexts = self.contexts
        for context in contexts.all {
            context.loop.execute {
                for listener in listeners { context.gatewayRoutes[listener.name] = listener.routes }
            }
        }
        logger.info(
            "gateway routes reloaded",
            metadata: ["routes": "\(listeners.map(\.routes.count).reduce(0, +))", "new-services": "\(added)"]
        )
        return added
    }

    /// A cluster (empty until discovery fills it) for each new service, on every loop.
    private func addDiscoveredClusters(_ names: [String]) {
        let loops = contexts.all.count
        for name in names where !discovered.contains(name) {
            discovered.append(name)
            let cluster = ClusterConfig.discovered(name)
            let metrics = ClusterMetrics(name: name, endpoints: [], registry: registry, histograms: histograms)
            clusterMetricsByName[name] = metrics
            let tls = meshTLS
            let zone = config.zone
            let logger = logger
            for context in contexts.all {
                context.loop.execute {
                    context.clusters[name] = LoopCluster(
                        config: cluster,
                        addresses: [],
                        zone: zone,
                        tls: tls,
                        loop: context.loop,
                        loopIndex: context.index,
                        loopCount: loops,
                        metrics: metrics,
                        logger: logger
                    )
                }
            }
        }
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

    private func bind(
        _ name: String,
        _ address: HostPort,
        quiesce: Bool = true,
        initializer: @escaping @Sendable (any Channel) throws -> Void
    ) async throws {
        let helper = quiesce ? ServerQuiescingHelper(group: group) : nil
        // Traffic listeners of a sidecar that expects discovery wait for its first state:
        // bound (their ports are known), callers queued in the backlog, nothing accepted.
        // The admin listener answers probes at once.
        let gated = quiesce && flags.discoveryExpected && !flags.discoveryApplied.load(ordering: .relaxed)
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
                channel.eventLoop.makeCompletedFuture { try initializer(channel) }
            }
        do {
            let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
            listeners.append((name, channel, helper))
            if gated { gatedListeners.append(channel) }
        } catch {
            throw ListenerBindError(listener: name, address: address, underlying: error)
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

/// Lifecycle flags read from any thread (admin /ready, drain).
private final class Flags: Sendable {
    let started = Atomic<Bool>(false)
    let draining = Atomic<Bool>(false)
    let discoveryApplied = Atomic<Bool>(false)
    /// Unix milliseconds of the last confirmation of the discovery state (0: none).
    let confirmedAtMillis = Atomic<Int64>(0)
    /// A controller is configured and there are services to watch.
    let discoveryExpected: Bool
    /// Where the workload certificate lives, when the sidecar is to have one.
    let identity: MeshTLSSource?

    init(discoveryExpected: Bool, identity: MeshTLSSource?) {
        self.discoveryExpected = discoveryExpected
        self.identity = identity
    }

    var readiness: Readiness {
        Readiness(
            listening: started.load(ordering: .relaxed),
            discovery: !discoveryExpected || discoveryApplied.load(ordering: .relaxed),
            identity: identity.map { $0.current != nil } ?? true,
            draining: draining.load(ordering: .relaxed)
        )
    }
}

/// Whether a sidecar can do its job: its listeners bound, its first discovery state applied
/// (when it has a controller), its workload identity installed (when it is to have one),
/// and not draining. `/ready` answers 200 only then; `meshwork run` starts the app then.
public struct Readiness: Sendable, Hashable, CustomStringConvertible {
    public var listening: Bool
    public var discovery: Bool
    public var identity: Bool
    public var draining: Bool

    public var isReady: Bool { listening && discovery && identity && !draining }

    /// `ready`, or what is missing: `not ready: listeners, discovery, identity` / `draining`.
    public var description: String {
        if draining { return "draining" }
        let missing = [(listening, "listeners"), (discovery, "discovery"), (identity, "identity")]
            .filter { !$0.0 }.map(\.1)
        return missing.isEmpty ? "ready" : "not ready: " + missing.joined(separator: ", ")
    }
}

/// A listener's port could not be bound.
public struct ListenerBindError: Error, CustomStringConvertible {
    public var listener: String
    public var address: HostPort
    public var underlying: any Error

    public var description: String {
        "cannot listen on \(address) for \(listener): \(underlying)"
    }
}

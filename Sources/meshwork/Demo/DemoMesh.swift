import AsyncHTTPClient
import Foundation
import Logging
import MeshworkController
import MeshworkDataPlane
import MeshworkDemo
import MeshworkDiscovery
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization

/// Everything `meshwork demo` runs, in this process: the controller, the apps with their
/// sidecars, the gateway and the load. Components talk over real sockets on 127.0.0.1,
/// with join tokens, mTLS and the controller's watch streams, as separate processes would.
actor DemoMesh {
    struct Instance: Sendable {
        var service: String
        var name: String
        var zone: String
        var app: DemoApp
        var sidecar: Sidecar
        var config: SidecarConfig
        var registry: PrometheusCollectorRegistry
        var inbound: SocketAddress?
    }

    /// The application: each service, its instance count, and the service it calls.
    static let services: [(name: String, count: Int, calls: String?)] = [
        ("inventory", 2, nil), ("orders", 3, "inventory"), ("web", 2, "orders"),
    ]

    /// The instance that runs the next version of its service (the others run v1).
    static let canary = "web-2"
    static let canaryHeader = "x-demo-canary"

    /// The demo's route (docs/routes.md), applied through the controller's API like any:
    /// the gateway's calls to web with the canary header go to web's v2 instance, the rest to
    /// v1. One load request in ten carries the header.
    static let route = """
        {"kind": "HTTPRoute", "parentRefs": [{"name": "web"}], "rules": [
          {"name": "canary", "matches": [{"headers": [{"name": "\(canaryHeader)", "value": "1"}]}],
           "backendRefs": [{"name": "web", "version": "v2"}]},
          {"name": "stable", "backendRefs": [{"name": "web", "version": "v1"}]}]}
        """

    /// The demo's rollouts (docs/rollouts.md). orders v2 (orders-4) waits at its first
    /// step until the demo promotes it; it is then moved to step by step and promoted by
    /// its analyses. Then v3 (orders-5, which fails half its requests while its health
    /// check passes) is rolled out over v2 and rolled back by its first analysis.
    static let goodRollout = """
        {"kind": "Rollout", "name": "orders-v2", "service": "orders", "stable": "v1", "canary": "v2", "steps": [
          {"pause": {}}, {"setWeight": 25}, {"analysis": {"successRate": 95, "interval": "2s", "minRequests": 3}},
          {"setWeight": 60}, {"analysis": {"successRate": 95, "interval": "2s", "minRequests": 3}}]}
        """
    static let badRollout = """
        {"kind": "Rollout", "name": "orders-v3", "service": "orders", "stable": "v2", "canary": "v3", "steps": [
          {"setWeight": 10}, {"analysis": {"successRate": 95, "interval": "2s", "minRequests": 3}},
          {"setWeight": 50}, {"analysis": {"successRate": 95, "interval": "2s", "minRequests": 3}}]}
        """
    /// The versions' extra instances: (index, version); orders-1...3 run v1.
    static let nextVersions: [(index: Int, version: String)] = [(4, "v2"), (5, "v3")]
    static let badInstance = "orders-5"

    /// A rollout as the live view shows it.
    struct RolloutView: Sendable {
        var name: String
        var stable: String
        var canary: String
        var phase: String
        var step: Int
        var steps: Int
        var weight: Int
        var message: String
    }

    let directory: String
    let gatewayPort: Int
    let rate: Int
    /// Three controllers on etcd (`--ha`) instead of one in this process.
    let ha: Bool
    private var controlPlane: DemoControlPlane?
    nonisolated let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
    nonisolated let http: HTTPClient
    nonisolated let load = LoadStats()
    private let logger = Logger(label: "meshwork.demo")
    private let token: String
    private var controllerGroup: ServiceGroup?
    private var controllerTask: Task<Void, any Error>?
    private var meshGroup: ServiceGroup?
    private var meshTask: Task<Void, any Error>?
    private(set) var apiURL = ""
    /// `--ha`: what sidecars are given: the controllers from the second on, so their
    /// telemetry reaches the leader (the first, at the start) only through a follower's
    /// relay, as it would in any mesh.
    private var sidecarControllers: String?
    /// The controller's trust bundle, which verifies its API (HTTPS, like any controller's).
    private(set) var caFile = ""
    /// For the API: verifies it with `caFile`.
    /// The controller's API, through the same link sidecars and `ctl` use.
    private var api: HTTPControllerClient?
    private(set) var dnsAddress: SocketAddress?
    private(set) var gatewayAddress: SocketAddress?
    private(set) var gatewayAdmin: SocketAddress?
    private(set) var instances: [Instance] = []

    init(directory: String, gatewayPort: Int, rate: Int, ha: Bool = false) {
        self.directory = directory
        self.gatewayPort = gatewayPort
        self.rate = rate
        self.ha = ha
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(2), read: .seconds(5))
        self.http = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        var generator = SystemRandomNumberGenerator()
        self.token = (0..<4).map { _ in String(generator.next(), radix: 16) }.joined()
    }

    // MARK: start

    func start() async throws {
        try await startController()
        guard let api, let (status, body) = try? await api.call(.PUT, "/v1/routes/web-canary", body: Self.route),
            status == .ok
        else { throw CommandFailure("the controller did not take the demo's route") }
        logger.debug("route applied", metadata: ["route": "\(String(buffer: body).prefix(200))"])
        // Before orders' next versions start: its route keeps them out until they are rolled out.
        guard (try? await api.call(.PUT, "/v1/rollouts/orders-v2", body: Self.goodRollout))?.0 == .ok else {
            throw CommandFailure("the controller did not take the demo's rollout")
        }
        for service in Self.services {
            for index in 1...service.count {
                try await startInstance(service.name, index: index, calls: service.calls)
            }
        }
        for next in Self.nextVersions {
            try await startInstance("orders", index: next.index, calls: "inventory", version: next.version)
        }
        for instance in instances where instance.name == Self.badInstance { instance.app.setErrorRate(50) }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        for instance in instances {
            services.append(.init(service: instance.sidecar))
            services += try await agent(for: instance.sidecar, config: instance.config)
        }
        let (gateway, gatewayConfig) = try await startGateway()
        services.append(.init(service: gateway))
        services += try await agent(for: gateway, config: gatewayConfig)
        // Stopped in reverse: each agent deregisters before its sidecar drains.
        let meshGroup = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [], logger: logger)
        )
        self.meshGroup = meshGroup
        meshTask = Task { try await meshGroup.run() }
        try await waitUntilServing()
    }

    private func startController() async throws {
        if ha { return try await startControlPlane() }
        var options = ControllerServer.Options(
            dataDirectory: (directory as NSString).appendingPathComponent("controller"),
            listen: HostPort(host: "127.0.0.1", port: 0),
            token: token
        )
        options.dns = HostPort(host: "127.0.0.1", port: 0)
        options.tls = true
        let (api, apiContinuation) = AsyncStream<SocketAddress>.makeStream()
        let (dns, dnsContinuation) = AsyncStream<SocketAddress>.makeStream()
        let controller = try ControllerServer(
            options: options,
            logger: logger,
            onListening: { apiContinuation.yield($0) },
            onDNSListening: { dnsContinuation.yield($0) }
        )
        let controllerGroup = ServiceGroup(
            configuration: .init(services: [.init(service: controller)], gracefulShutdownSignals: [], logger: logger)
        )
        self.controllerGroup = controllerGroup
        controllerTask = Task { try await controllerGroup.run() }
        dnsAddress = await first(of: dns)
        guard let address = await first(of: api), let port = address.port else {
            throw CommandFailure("the controller did not start (see the log)")
        }
        apiURL = "https://127.0.0.1:\(port)"
        caFile = (options.dataDirectory as NSString).appendingPathComponent("ca.pem")
        guard let roots = try? NIOSSLCertificate.fromPEMFile(caFile), !roots.isEmpty else {
            throw CommandFailure("the controller wrote no CA file at \(caFile)")
        }
        self.api = HTTPControllerClient(
            baseURL: apiURL,
            token: token,
            roots: roots,
            group: group,
            timeouts: .init(connect: .seconds(2), read: .seconds(5))
        )
    }

    /// `--ha`: three controller processes on a 3-member etcd; sidecars, the gateway and the
    /// demo's own calls are given all three and fail over.
    private func startControlPlane() async throws {
        let plane = DemoControlPlane(directory: directory, token: token)
        controlPlane = plane
        let (group, token) = (group, token)
        let caFile = await plane.caFile
        try await plane.start { url in
            guard let roots = try? NIOSSLCertificate.fromPEMFile(caFile), !roots.isEmpty else { return false }
            let probe = HTTPControllerClient(
                baseURL: url,
                token: token,
                roots: roots,
                group: group,
                timeouts: .init(connect: .seconds(1), read: .seconds(2))
            )
            let answered = (try? await probe.call(.GET, "/v1/leader"))?.0 == .ok
            await probe.shutdown()
            return answered
        }
        let urls = await plane.urls
        apiURL = urls.joined(separator: ",")
        sidecarControllers = (urls.dropFirst() + urls.prefix(1)).joined(separator: ",")
        self.caFile = caFile
        if let port = await plane.dnsPorts.first { dnsAddress = try? SocketAddress(ipAddress: "127.0.0.1", port: port) }
        guard let roots = try? NIOSSLCertificate.fromPEMFile(caFile), !roots.isEmpty else {
            throw CommandFailure("the controllers wrote no CA file at \(caFile)")
        }
        api = HTTPControllerClient(
            baseURL: apiURL,
            token: token,
            roots: roots,
            group: group,
            timeouts: .init(connect: .seconds(2), read: .seconds(5))
        )
    }

    /// Who leads the controllers now (nil: nobody, or a single controller).
    func leader() async -> String? {
        guard let api, let (status, body) = try? await api.call(.GET, "/v1/leader", timeout: .seconds(2)),
            status == .ok,
            let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]
        else { return nil }
        return object["leader"] as? String
    }

    /// The controllers and whether each runs (`--ha`).
    func controllerStates() async -> [(name: String, running: Bool)] {
        guard let controlPlane else { return [] }
        var states: [(String, Bool)] = []
        for member in await controlPlane.controllers {
            states.append((member.name, await controlPlane.isRunning(member.name)))
        }
        return states
    }

    /// SIGKILLs the leading controller; who leads next and how long that took (bounded:
    /// 15 s).
    func killLeader() async -> (killed: String, next: String?, after: Duration)? {
        guard let controlPlane, let leader = await leader() else { return nil }
        let start = ContinuousClock.now
        await controlPlane.kill(leader)
        logger.notice("controller SIGKILLed", metadata: ["controller": "\(leader)"])
        while ContinuousClock.now - start < .seconds(15) {
            if let next = await self.leader(), next != leader { return (leader, next, ContinuousClock.now - start) }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return (leader, nil, ContinuousClock.now - start)
    }

    func restartController(_ name: String) async {
        do {
            try await controlPlane?.restart(name)
        } catch {
            logger.error("controller not restarted", metadata: ["controller": "\(name)", "error": "\(error)"])
        }
    }

    /// The first element of `stream`, or nil after 10 s.
    private func first(of stream: AsyncStream<SocketAddress>) async -> SocketAddress? {
        await withTaskGroup(of: SocketAddress?.self) { group in
            group.addTask {
                for await address in stream { return address }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// A join token for `service`, written to a file the sidecar reads.
    private func joinTokenFile(_ service: String, name: String) async throws -> String {
        guard let api else { throw CommandFailure("the controller is not running") }
        let (status, body) = try await api.call(
            .POST,
            "/v1/tokens",
            body: #"{"service": "\#(service)", "ttl": "1h", "uses": 1}"#,
            timeout: .seconds(5)
        )
        guard status == .ok,
            let object = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
            let joinToken = object["token"] as? String
        else { throw CommandFailure("cannot create a join token for \(service): \(String(buffer: body))") }
        let file = (directory as NSString).appendingPathComponent("\(name).token")
        try SecretFile.write(joinToken + "\n", to: file)
        return file
    }

    private func baseConfig(service: String, name: String) async throws -> SidecarConfig {
        var config = SidecarConfig()
        config.service = service
        config.admin = HostPort(host: "127.0.0.1", port: 0)
        var link = ControllerLink(url: sidecarControllers ?? apiURL)
        link.joinTokenFile = try await joinTokenFile(service, name: name)
        // Every second: the rollouts' analyses measure 2-second intervals.
        link.telemetryInterval = .seconds(1)
        config.controller = link
        config.timeouts.drain = .seconds(2)
        return config
    }

    // MARK: rollouts

    /// Every rollout, as the live view shows it.
    func rollouts() async -> [RolloutView] {
        guard let api, let (status, body) = try? await api.call(.GET, "/v1/rollouts"), status == .ok,
            let list = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [[String: Any]]
        else { return [] }
        return list.map { item in
            let status = item["status"] as? [String: Any] ?? [:]
            return RolloutView(
                name: item["name"] as? String ?? "?",
                stable: item["stable"] as? String ?? "?",
                canary: item["canary"] as? String ?? "?",
                phase: status["phase"] as? String ?? "?",
                step: status["step"] as? Int ?? 0,
                steps: (item["steps"] as? [Any])?.count ?? 0,
                weight: status["weight"] as? Int ?? 0,
                message: status["message"] as? String ?? ""
            )
        }
    }

    /// Promotes orders v2 past its first step (what an operator does with `ctl rollout promote`).
    func startGoodRollout() async {
        _ = try? await api?.call(.POST, "/v1/rollouts/orders-v2/promote")
    }

    /// Rolls out the bad v3 over v2 (it replaces the finished v2 rollout).
    func startBadRollout() async {
        _ = try? await api?.call(.PUT, "/v1/rollouts/orders-v3", body: Self.badRollout)
    }

    private func startInstance(_ service: String, index: Int, calls: String?, version: String? = nil) async throws {
        let name = "\(service)-\(index)"
        let zone = index % 2 == 1 ? "zone-a" : "zone-b"
        let app = try await DemoApp.start(name: name, group: group)
        var config = try await baseConfig(service: service, name: name)
        config.zone = zone
        config.inbound = InboundConfig(
            listen: HostPort(host: "127.0.0.1", port: 0),
            app: HostPort(host: "127.0.0.1", port: app.port)
        )
        config.instance.id = name
        config.instance.zone = zone
        config.instance.version = version ?? (name == Self.canary ? "v2" : "v1")
        config.instance.ttl = .seconds(5)
        config.healthCheck.kind = .http
        config.healthCheck.path = "/health"
        config.healthCheck.interval = .seconds(1)
        if let calls {
            config.discover = [calls]
            config.upstreams = [UpstreamConfig(listen: HostPort(host: "127.0.0.1", port: 0), cluster: calls)]
        }
        let registry = PrometheusCollectorRegistry()
        let sidecar = try Sidecar(config: config, group: group, registry: registry, logger: logger)
        try await sidecar.start()
        let bound = await sidecar.boundAddresses
        if let calls, let port = bound["upstream:\(calls)"]?.port {
            app.setDownstream(port: port, client: http)
        }
        instances.append(
            Instance(
                service: service,
                name: name,
                zone: zone,
                app: app,
                sidecar: sidecar,
                config: config,
                registry: registry,
                inbound: bound["inbound"]
            )
        )
    }

    private func startGateway() async throws -> (Sidecar, SidecarConfig) {
        var config = try await baseConfig(service: "gateway", name: "gateway")
        var listener = GatewayListenerConfig(name: "public", listen: HostPort(host: "127.0.0.1", port: gatewayPort))
        listener.routes = [GatewayRoute(service: "web")]
        config.listeners = [listener]
        config.discover = ["web"]
        let sidecar: Sidecar
        do {
            sidecar = try Sidecar(config: config, group: group, registry: PrometheusCollectorRegistry(), logger: logger)
            try await sidecar.start()
        } catch let error as ListenerBindError {
            throw CommandFailure("\(error) (pick another with --port, or 0 for any free port)")
        }
        let bound = await sidecar.boundAddresses
        gatewayAddress = bound["gateway:public"]
        gatewayAdmin = bound["admin"]
        return (sidecar, config)
    }

    private func agent(
        for sidecar: Sidecar,
        config: SidecarConfig
    ) async throws -> [ServiceGroupConfiguration.ServiceConfiguration] {
        try await DiscoveryAgent.make(config: config, sidecar: sidecar, group: group, logger: logger).services.map {
            .init(service: $0)
        }
    }

    /// Bounded (30 s): until a call through the gateway crosses all three services.
    private func waitUntilServing() async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let text = try? await get("/"), text.contains("inventory-") { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw CommandFailure("the mesh did not start serving within 30 s (see the log)")
    }

    private func get(_ path: String) async throws -> String? {
        guard let port = gatewayAddress?.port else { return nil }
        let response = try await http.execute(
            HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)"),
            timeout: .seconds(2)
        )
        let body = try await response.body.collect(upTo: 1 << 16)
        return response.status == .ok ? String(buffer: body) : nil
    }

    func describe() -> String {
        var lines = [
            "controller API  \(apiURL)   (meshwork ctl --controller \(apiURL) --ca-file \(caFile) services)"
        ]
        if ha {
            lines.append(
                "controllers     controller-1..3 on a 3-member etcd (prefix \(DemoControlPlane.prefix)), one leads; the leader is SIGKILLed partway and started again"
            )
        }
        let first = apiURL.split(separator: ",").first.map(String.init) ?? apiURL
        lines.append("dashboard       \(first)/ui" + (ha ? "   (any controller's: each serves the same mesh)" : ""))
        if let port = dnsAddress?.port {
            lines.append("DNS             127.0.0.1:\(port)   (dig @127.0.0.1 -p \(port) orders.service.mesh SRV)")
        }
        if let port = gatewayAddress?.port {
            lines.append("gateway         http://127.0.0.1:\(port)/   (curl it: web -> orders -> inventory)")
            lines.append(
                "route           web-canary: \(Self.canaryHeader): 1 -> web v2 (\(Self.canary)), the rest -> v1   (curl -H '\(Self.canaryHeader): 1' http://127.0.0.1:\(port)/)"
            )
        }
        lines.append(
            "rollouts        orders v1 -> v2 (orders-4) \(DemoView.rolloutAfterFaults) s after the faults start, promoted by its analyses; then v3 (\(Self.badInstance), 50% errors) over v2, rolled back"
        )
        for instance in instances {
            let inbound = instance.inbound?.port.map { "127.0.0.1:\($0)" } ?? "?"
            lines.append(
                "\(instance.name.padding(toLength: 15, withPad: " ", startingAt: 0)) app 127.0.0.1:\(instance.app.port), sidecar inbound \(inbound) (mTLS), \(instance.zone)"
            )
        }
        return lines.joined(separator: "\n")
    }

    // MARK: load

    /// A steady `rate` of GETs through the gateway until cancelled, paced per worker.
    nonisolated func runLoad() async {
        guard let port = await gatewayAddress?.port else { return }
        let workers = min(16, max(1, rate / 5))
        let interval = Duration.seconds(Double(workers) / Double(rate))
        let url = "http://127.0.0.1:\(port)/"
        await withDiscardingTaskGroup { group in
            for worker in 0..<workers {
                group.addTask {
                    // Spread the workers over one interval.
                    try? await Task.sleep(for: interval * (Double(worker) / Double(workers)))
                    var next = ContinuousClock.now
                    var sent = worker
                    while !Task.isCancelled {
                        let start = ContinuousClock.now
                        var ok = false
                        var request = HTTPClientRequest(url: url)
                        sent += 1
                        if sent % 10 == 0 { request.headers.add(name: Self.canaryHeader, value: "1") }
                        if let response = try? await self.http.execute(request, timeout: .seconds(5)) {
                            _ = try? await response.body.collect(upTo: 1 << 20)
                            ok = response.status == .ok
                        }
                        // A call cut short by the end of the demo is not a failure of the mesh.
                        if Task.isCancelled { return }
                        self.load.record(ok: ok, latency: ContinuousClock.now - start)
                        next += interval
                        let now = ContinuousClock.now
                        if next > now {
                            try? await Task.sleep(for: next - now)
                        } else {
                            next = now
                        }
                    }
                }
            }
        }
    }

    /// The registry's view of every instance: id -> health.
    func registryHealth() async -> [String: String] {
        guard let api,
            let (status, body) = try? await api.call(.GET, "/v1/instances", timeout: .seconds(2)),
            status == .ok,
            let list = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [[String: Any]]
        else { return [:] }
        var health: [String: String] = [:]
        for item in list {
            if let id = item["id"] as? String { health[id] = item["health"] as? String ?? "?" }
        }
        return health
    }

    // MARK: stop

    func stop() async {
        if let meshGroup {
            await meshGroup.triggerGracefulShutdown()
            _ = await meshTask?.result
        }
        for instance in instances { await instance.app.stop() }
        if let controllerGroup {
            await controllerGroup.triggerGracefulShutdown()
            _ = await controllerTask?.result
        }
        await controlPlane?.stop()
        try? await http.shutdown()
        await api?.shutdown()
        try? await group.shutdownGracefully()
    }
}

/// What the load generator saw, per second: requests, successes and latencies.
final class LoadStats: Sendable {
    struct Second: Sendable {
        var requests = 0
        var succeeded = 0
        var latencies: [Duration] = []
    }

    private let state = Mutex<(current: Second, total: Second)>((Second(), Second()))

    func record(ok: Bool, latency: Duration) {
        state.withLock { state in
            state.current.requests += 1
            state.total.requests += 1
            if ok {
                state.current.succeeded += 1
                state.total.succeeded += 1
            }
            state.current.latencies.append(latency)
            // The summary's percentiles: the first 200,000 samples are plenty (bounded memory).
            if state.total.latencies.count < 200_000 { state.total.latencies.append(latency) }
        }
    }

    /// The second just ended (and a new one begins).
    func takeSecond() -> Second {
        state.withLock { state in
            defer { state.current = Second() }
            return state.current
        }
    }

    var total: Second { state.withLock { $0.total } }
}

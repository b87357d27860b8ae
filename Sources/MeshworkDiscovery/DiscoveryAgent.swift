import AsyncHTTPClient
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkIdentity
import MeshworkModel
import NIOCore
import NIOSSL
import ServiceLifecycle

/// The sidecar's link to the controller, run beside the `Sidecar` in one ServiceGroup:
///
/// - **Watch**: streams the services in `discover` and applies every change to the
///   sidecar's clusters; on a broken stream it reconnects with backoff (0.2 s doubling to
///   5 s) and resumes from its last revision. Meanwhile routing goes on with what it knew.
/// - **Cache**: the last state is written to `controller.cacheFile` (at most once a second),
///   and read at start, so a sidecar can start and serve while the controller is down.
/// - **Registration**: registers this instance (`starting` until the app's health check
///   passes), heartbeats at a third of the TTL with the current health, registers again
///   when the controller has forgotten it, and deregisters first on shutdown.
public actor DiscoveryAgent: Service {
    let config: SidecarConfig
    let sidecar: Sidecar
    var client: ControllerClient
    /// For the app's health checks (and the controller, over plain HTTP).
    let http: HTTPClient
    /// For the controller over HTTPS: verifies its certificate with `controller.caFile`,
    /// then with the trust bundle the controller hands out (rebuilt when it changes).
    var controllerHTTP: HTTPClient?
    let group: any EventLoopGroup
    let logger: Logger
    private var state = DiscoveryState()
    private var health: HealthState
    private var instance: InstanceResource?
    private var lastCacheWrite = ContinuousClock.now - .seconds(10)
    private var cacheDirty = false
    /// A write is due within a second of a change (the file is written at most once a
    /// second): a timer makes sure it comes even when no other change follows.
    private var cacheWriteScheduled = false
    /// Whether the first state (from the cache or the controller) has been applied.
    public private(set) var hasState = false
    /// The workload key and certificate, when the sidecar gets its identity from the controller.
    var workload: (key: WorkloadKey, issued: IssuedCertificate)?
    var trustBundle: String?
    /// Set when a CA rotation makes the current certificate's root inactive.
    var renewSoon = false
    /// Whether the controller's roots came from the join token's pin.
    var pinnedTrust = false
    /// Why the sidecar must stop (the mesh requires mTLS and it has no identity).
    private let (fatal, fatalContinuation) = AsyncStream.makeStream(of: MTLSRequired.self)

    /// `kind: Mesh` requires mTLS and this sidecar has neither a join token nor TLS files.
    public struct MTLSRequired: Error, CustomStringConvertible {
        public var description: String {
            "the mesh requires mTLS (kind: Mesh, requireMTLS: true) and this sidecar has no identity: give it a join token (--join-token-file) or tls files"
        }
    }

    public init(config: SidecarConfig, sidecar: Sidecar, group: any EventLoopGroup, logger: Logger) throws {
        guard let link = config.controller else {
            throw ControllerClient.Failure(description: "no controller configured")
        }
        self.config = config
        self.sidecar = sidecar
        self.group = group
        self.logger = logger
        // The read timeout ends a watch stream that went silent (a controller host gone
        // without closing its connections): the controller pings every 10 s.
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(25))
        let plainHTTP = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        self.http = plainHTTP
        var apiHTTP: HTTPClient?
        if link.url.hasPrefix("https://") {
            var roots: NIOSSLTrustRoots = .default
            if let caFile = link.caFile {
                guard let certificates = try? NIOSSLCertificate.fromPEMFile(caFile), !certificates.isEmpty else {
                    throw ControllerClient.Failure(description: "cannot read controller.caFile \(caFile)")
                }
                roots = .certificates(certificates)
            }
            apiHTTP = DiscoveryAgent.makeControllerHTTP(group: group, roots: roots)
        }
        self.controllerHTTP = apiHTTP
        var token: String?
        if let file = link.tokenFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ControllerClient.Failure(description: "cannot read controller.tokenFile \(file)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        self.client = ControllerClient(baseURL: link.url, token: token, http: apiHTTP ?? plainHTTP)
        self.health = HealthState(
            healthyThreshold: config.healthCheck.healthyThreshold,
            unhealthyThreshold: config.healthCheck.unhealthyThreshold
        )
    }

    static func makeControllerHTTP(group: any EventLoopGroup, roots: NIOSSLTrustRoots) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(25))
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = roots
        tls.minimumTLSVersion = .tlsv12
        // Closing does not wait the default 5 s for the controller's close_notify (RFC 8446
        // 6.1 does not ask the closing side to wait): the controller does not read it while
        // it streams a watch, so every sidecar's shutdown took 5 s more.
        tls.shutdownTimeout = .milliseconds(200)
        configuration.tlsConfiguration = tls
        return HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
    }

    public func run() async throws {
        do {
            try await runUntilShutdown()
        } catch {
            // A refused join token: the sidecar stops, with the controller's reason.
            try? await http.shutdown()
            try? await controllerHTTP?.shutdown()
            throw error
        }
    }

    private func runUntilShutdown() async throws {
        // The instance id first: the first state applied already places this sidecar in
        // its subsets.
        _ = await makeInstance()
        await loadCache()
        if hasState, state.mesh.requireMTLS, sidecar.meshTLS == nil { throw MTLSRequired() }
        try await withGracefulShutdownHandler {
            // A sidecar with a join token gets its certificate first: without it, it can
            // neither serve nor call peers (its inbound refuses connections until then).
            if config.controller?.usesWorkloadIdentity == true {
                try await bootstrapIdentity()
                if stopping { return }
            }
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    for await refusal in self.fatal { throw refusal }
                }
                if workload != nil {
                    group.addTask { await self.renewalLoop() }
                }
                if !watchedServices.isEmpty {
                    group.addTask { await self.watchLoop() }
                }
                if config.inbound != nil {
                    group.addTask { await self.registrationLoop() }
                    group.addTask { await self.telemetryLoop() }
                }
                // Lives until shutdown even with nothing else to do: a service that returns
                // early would end the whole group.
                group.addTask { await self.pause(.seconds(86_400 * 365 * 100)) }
            }
        } onGracefulShutdown: {
            Task { await self.stopped() }
        }
        // Deregister first: the sidecar drains after this service has returned.
        await deregister()
        try? await http.shutdown()
        try? await controllerHTTP?.shutdown()
    }

    var stopping = false
    private var wakeups: [UUID: CheckedContinuation<Void, Never>] = [:]

    private var currentWatch: Task<Void, any Error>?

    private func stopped() {
        stopping = true
        fatalContinuation.finish()
        currentWatch?.cancel()
        wakeAll()
    }

    /// Sleeps for `duration`, or less when shutdown begins (or `wakeAll` is called). Each
    /// pause ends on its own timer: one loop's timer does not wake the others.
    func pause(_ duration: Duration) async {
        guard !stopping else { return }
        let id = UUID()
        let task = Task {
            try? await Task.sleep(for: duration)
            self.wake(id)
        }
        // The continuation is stored before this actor can run the timer's `wake`.
        await withCheckedContinuation { continuation in
            if stopping {
                continuation.resume()
            } else {
                wakeups[id] = continuation
            }
        }
        task.cancel()
    }

    private func wake(_ id: UUID) {
        wakeups.removeValue(forKey: id)?.resume()
    }

    /// Ends every pause now (shutdown, or a trust bundle change that calls for a renewal).
    func wakeAll() {
        for wakeup in wakeups.values { wakeup.resume() }
        wakeups.removeAll()
    }

    // MARK: watch

    /// The services it calls, and its own (for the authorization policies that target it).
    private var watchedServices: [String] {
        var services = config.discover + addedServices.filter { !config.discover.contains($0) }
        if config.inbound != nil, !services.contains(config.service) { services.append(config.service) }
        return services
    }

    /// Services added while running (a gateway reload routing to a new service).
    private var addedServices: [String] = []
    private var needsSnapshot = false

    /// Watches `services` as well from now on: the current watch is replaced by one that
    /// starts from a fresh snapshot (the events it resumed from would lack their instances).
    public func watch(additional services: [String]) {
        let new = services.filter { !config.discover.contains($0) && !addedServices.contains($0) }
        guard !new.isEmpty else { return }
        addedServices += new
        needsSnapshot = true
        currentWatch?.cancel()
    }

    private func watchLoop() async {
        var backoff = Duration.milliseconds(200)
        while !stopping {
            let services = watchedServices
            let revision: Int64? = needsSnapshot ? nil : state.revision
            needsSnapshot = false
            let client = self.client
            do {
                let watch = Task {
                    try await client.watch(services: services, after: revision) { line in
                        await self.received(line)
                    }
                }
                currentWatch = watch
                if stopping { watch.cancel() }
                // Shutdown ends the stream by cancelling it.
                await withTaskCancellationHandler {
                    _ = await watch.result
                } onCancel: {
                    watch.cancel()
                }
                if stopping { return }
                try await watch.value
                backoff = .milliseconds(200)
                logger.info("watch ended; reconnecting", metadata: ["revision": "\(state.revision)"])
            } catch {
                if stopping { return }
                // Cancelled to watch more services: reconnect at once.
                if needsSnapshot { continue }
                logger.warning(
                    "controller unreachable; routing on the last known state",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)", "revision": "\(state.revision)"]
                )
            }
            await pause(backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    private func received(_ line: WatchLine) async {
        switch line {
        case .snapshot(let snapshot):
            state = snapshot
        case .event(let event):
            state.apply(event)
        case .ping:
            sidecar.discoveryConfirmed()
            // The controller says the state still holds: the cache says so too, at most
            // every 30 s, so its age at the next start is the state's.
            if ContinuousClock.now - lastCacheWrite >= .seconds(30) {
                cacheDirty = true
                writeCacheIfDue()
            }
            return
        case .trustBundle(let bundle, let activeRoot, let revoked):
            if sidecar.meshTLS?.setRevoked(revoked) == true { await sidecar.retirePeerConnections() }
            trustBundleChanged(bundle, activeRoot: activeRoot)
            return
        }
        if !hasState, state.mesh.requireMTLS, sidecar.meshTLS == nil {
            // Refuses to start: the first state says no hop may be plaintext.
            logger.error("\(MTLSRequired())")
            fatalContinuation.yield(MTLSRequired())
            stopped()  // every loop ends; the refusal, queued first, is what the agent throws
        }
        hasState = true
        await sidecar.apply(state)
        sidecar.discoveryConfirmed()
        cacheDirty = true
        writeCacheIfDue()
    }

    // MARK: cache

    private func loadCache() async {
        guard let file = config.controller?.cacheFile,
            let text = try? String(contentsOfFile: file, encoding: .utf8),
            case .snapshot(let cached)? = try? WatchLine.parse(text.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return }
        // The file's time is when the controller last confirmed the state (written after
        // every change and refreshed every 30 s while the watch is live).
        let written = (try? FileManager.default.attributesOfItem(atPath: file)[.modificationDate] as? Date) ?? nil
        let age = written.map { Date().timeIntervalSince($0) } ?? .infinity
        if let limit = config.controller?.maxStaleness, age > Double(limit.nanoseconds) / 1e9 {
            logger.warning(
                "the discovery cache is older than maxStaleness: not used",
                metadata: ["file": "\(file)", "age": "\(Int(age))s", "maxStaleness": "\(limit)"]
            )
            return
        }
        state = cached
        hasState = true
        logger.info(
            "serving from the cached state",
            metadata: ["file": "\(file)", "revision": "\(cached.revision)", "age": "\(Int(age))s"]
        )
        await sidecar.apply(state)
        if let written { sidecar.discoveryConfirmed(at: written) }
    }

    private func writeCacheIfDue(force: Bool = false) {
        guard cacheDirty, let file = config.controller?.cacheFile else { return }
        let now = ContinuousClock.now
        guard force || now - lastCacheWrite >= .seconds(1) else {
            guard !cacheWriteScheduled else { return }
            cacheWriteScheduled = true
            let due = lastCacheWrite + .seconds(1) - now
            Task {
                await self.pause(due)
                await self.scheduledCacheWrite()
            }
            return
        }
        lastCacheWrite = now
        cacheDirty = false
        do {
            var data = try WatchLine.snapshotLine(state)
            data.append(0x0A)
            // Written aside and renamed over the old one: a crash never leaves half a file;
            // 0600, as it names every instance and policy this sidecar knows.
            try SecretFile.write(data, to: file)
        } catch {
            logger.warning("cannot write the discovery cache", metadata: ["file": "\(file)", "error": "\(error)"])
        }
    }

    private func scheduledCacheWrite() {
        cacheWriteScheduled = false
        writeCacheIfDue()
    }

    // MARK: registration and health

    func makeInstance() async -> InstanceResource? {
        guard let inbound = config.inbound else { return nil }
        let bound = await sidecar.boundAddresses["inbound"]
        let port = bound?.port ?? inbound.listen.port
        let address = config.instance.address ?? inbound.listen.host
        let id = config.instance.id ?? InstanceResource.defaultID(service: config.service, address: address, port: port)
        await sidecar.setInstanceID(id)
        var instance = InstanceResource(id: id, service: config.service, address: address, port: port)
        instance.zone = config.instance.zone ?? config.zone
        instance.weight = config.instance.weight
        instance.version = config.instance.version
        instance.metadata = config.instance.metadata
        // Where the controller reaches this sidecar's admin listener (taps).
        if let admin = await sidecar.boundAddresses["admin"], let adminPort = admin.port, let ip = admin.ipAddress {
            let host = ip == "0.0.0.0" || ip == "::" ? address : ip
            instance.metadata[InstanceResource.adminMetadataKey] =
                host.contains(":") ? "[\(host)]:\(adminPort)" : "\(host):\(adminPort)"
        }
        instance.ttlSeconds = max(1, Int(config.instance.ttl.nanoseconds / 1_000_000_000))
        instance.health = health.health
        return instance
    }

    private func registrationLoop() async {
        guard var instance = await makeInstance(), let inbound = config.inbound else { return }
        self.instance = instance
        let checker = HealthChecker(config: config.healthCheck, app: inbound.app, http: http, group: group)
        let heartbeatEvery = Duration.nanoseconds(config.instance.ttl.nanoseconds / 3)
        var registered = false
        var nextHeartbeat = ContinuousClock.now
        while !stopping {
            if let changed = health.record(await checker.check()) {
                logger.info("app health changed", metadata: ["health": "\(changed.rawValue)"])
                instance.health = changed
                self.instance = instance
                nextHeartbeat = .now
            }
            if ContinuousClock.now >= nextHeartbeat {
                do {
                    if !registered {
                        try await client.register(instance)
                        registered = true
                        logger.info("registered", metadata: ["instance": "\(instance.id)"])
                    } else if try await !client.heartbeat(instance.id, health: instance.health) {
                        registered = false
                        logger.warning("the controller forgot this instance; registering again")
                        continue
                    }
                    nextHeartbeat = .now + heartbeatEvery
                } catch {
                    logger.warning("controller unreachable for registration", metadata: ["error": "\(error)"])
                    nextHeartbeat = .now + .seconds(1)
                }
            }
            writeCacheIfDue()
            await pause(.nanoseconds(config.healthCheck.interval.nanoseconds))
        }
    }

    /// Every `telemetryInterval`, what the sidecar carried per edge goes to the controller
    /// (a report that cannot be delivered is dropped: the sidecar's /metrics keeps totals).
    private func telemetryLoop() async {
        let interval = Duration.nanoseconds(config.controller?.telemetryInterval.nanoseconds ?? 5_000_000_000)
        var last = ContinuousClock.now
        while !stopping {
            await pause(interval)
            if stopping { return }
            let now = ContinuousClock.now
            let elapsed = now - last
            last = now
            let report = sidecar.edges.takeTelemetryReport(
                service: config.service,
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            )
            guard let instance, !report.edges.isEmpty else { continue }
            do {
                try await client.report(report, instance: instance.id)
            } catch {
                logger.debug("telemetry report not delivered", metadata: ["error": "\(error)"])
            }
        }
    }

    private func deregister() async {
        writeCacheIfDue(force: true)
        guard let instance else { return }
        do {
            try await client.deregister(instance.id)
            logger.info("deregistered", metadata: ["instance": "\(instance.id)"])
        } catch {
            logger.warning("could not deregister (the lease will expire)", metadata: ["error": "\(error)"])
        }
    }
}

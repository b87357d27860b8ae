import Foundation
import Logging
import MeshworkDataPlane
import MeshworkModel
import ServiceLifecycle

/// The watch and its cache, one of the discovery agent's services.
///
/// - **Watch**: streams the services the sidecar calls (and its own, for the authorization
///   policies that target it) and applies every change to the sidecar's clusters; on a
///   broken stream it reconnects with backoff (0.2 s doubling to 5 s) and resumes from its
///   last revision. Meanwhile routing goes on with what it knew.
/// - **Cache**: the last state is written to `controller.cacheFile` (at most once a second,
///   and every 30 s while the watch confirms it), and read at start, so a sidecar can start
///   and serve while the controller is down (unless the cache is older than `maxStaleness`).
actor DiscoveryWatch: Service {
    let config: SidecarConfig
    let sidecar: Sidecar
    let link: any ControllerClient
    let logger: Logger
    /// Opens once the workload identity is in place (at once without one).
    let identityReady: Latch
    /// Takes the trust bundle updates the stream carries.
    let identity: WorkloadIdentityAgent?
    private var state = DiscoveryState()
    /// Whether the first state (from the cache or the controller) has been applied.
    private(set) var hasState = false
    private var lastCacheWrite = ContinuousClock.now - .seconds(10)
    private var cacheDirty = false
    /// A write is due within a second of a change: a timer makes sure it comes even when no
    /// other change follows.
    private var cacheWriteScheduled = false
    /// Services added while running (a gateway reload routing to a new service).
    private var addedServices: [String] = []
    private var needsSnapshot = false
    private var applying = false
    private var applyPending = false
    private var currentWatch: Task<Void, any Error>?

    init(
        config: SidecarConfig,
        sidecar: Sidecar,
        link: any ControllerClient,
        identityReady: Latch,
        identity: WorkloadIdentityAgent?,
        logger: Logger
    ) {
        self.config = config
        self.sidecar = sidecar
        self.link = link
        self.identityReady = identityReady
        self.identity = identity
        self.logger = logger
    }

    /// `kind: Mesh` requires mTLS and this sidecar has neither a join token nor TLS files.
    public struct MTLSRequired: Error, CustomStringConvertible {
        public var description: String {
            "the mesh requires mTLS (kind: Mesh, requireMTLS: true) and this sidecar has no identity: give it a join token (--join-token-file) or tls files"
        }
    }

    /// The services it calls, and its own (for the authorization policies that target it).
    var watchedServices: [String] {
        var services = config.discover + addedServices.filter { !config.discover.contains($0) }
        if config.inbound != nil, !services.contains(config.service) { services.append(config.service) }
        // A gateway: the routes that name it as their parent.
        if !config.listeners.isEmpty { services.append(HTTPRoute.gatewayWatchKey(config.service)) }
        return services
    }

    func run() async throws {
        await loadCache()
        if hasState, state.mesh.requireMTLS, sidecar.meshTLS == nil { throw MTLSRequired() }
        try await runUntilShutdown {
            try await self.identityReady.wait()
            try await self.watchLoop()
        }
        // The cache says what the sidecar last knew, for its next start.
        writeCacheIfDue(force: true)
    }

    /// Watches `services` as well from now on: the current watch is replaced by one that
    /// starts from a fresh snapshot (the events it resumed from would lack their instances).
    func watch(additional services: [String]) {
        let new = services.filter { !config.discover.contains($0) && !addedServices.contains($0) }
        guard !new.isEmpty else { return }
        addedServices += new
        needsSnapshot = true
        currentWatch?.cancel()
    }

    /// Stops watching services added while running; the watch restarts from a snapshot of
    /// the services left (so their instances leave the state too).
    func unwatch(_ services: [String]) {
        let gone = addedServices.filter { services.contains($0) }
        guard !gone.isEmpty else { return }
        addedServices.removeAll { gone.contains($0) }
        needsSnapshot = true
        currentWatch?.cancel()
    }

    private func watchLoop() async throws {
        var backoff = Duration.milliseconds(200)
        while true {
            try Task.checkCancellation()
            let services = watchedServices
            let revision: Int64? = needsSnapshot ? nil : state.revision
            needsSnapshot = false
            let link = self.link
            let watch = Task {
                try await link.watch(services: services, after: revision) { line in
                    try await self.received(line)
                }
            }
            currentWatch = watch
            // Shutdown ends the stream by cancelling it.
            let result = await withTaskCancellationHandler {
                await watch.result
            } onCancel: {
                watch.cancel()
            }
            try Task.checkCancellation()
            switch result {
            case .success:
                backoff = .milliseconds(200)
                logger.info("watch ended; reconnecting", metadata: ["revision": "\(state.revision)"])
            case .failure(let error as MTLSRequired):
                throw error
            case .failure(let error):
                // Cancelled to watch more services: reconnect at once.
                if needsSnapshot { continue }
                logger.warning(
                    "controller unreachable; routing on the last known state",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)", "revision": "\(state.revision)"]
                )
            }
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    private func received(_ line: WatchLine) async throws {
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
            await identity?.trustBundleChanged(bundle, activeRoot: activeRoot)
            return
        }
        if !hasState, state.mesh.requireMTLS, sidecar.meshTLS == nil {
            // Refuses to start: the first state says no hop may be plaintext.
            logger.error("\(MTLSRequired())")
            throw MTLSRequired()
        }
        hasState = true
        scheduleApply()
    }

    /// Applies the latest state, coalescing: lines that arrive while an application runs
    /// (a burst of 1,000 route events from one `ctl apply`) are applied together after
    /// it, instead of rebuilding every route table once per event.
    private func scheduleApply() {
        applyPending = true
        guard !applying else { return }
        applying = true
        Task { await self.applyLatest() }
    }

    private func applyLatest() async {
        while applyPending {
            applyPending = false
            // (While this waits, the actor reads more lines into `state`.)
            await sidecar.apply(state)
            sidecar.discoveryConfirmed()
            cacheDirty = true
            writeCacheIfDue()
        }
        applying = false
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
                try? await Task.sleep(for: due)
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
}

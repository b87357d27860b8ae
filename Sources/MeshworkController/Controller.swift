import Foundation
import HTTPTypes
import Logging
import MeshworkModel
import NIOCore

/// What a watcher receives: first a snapshot (or the events it missed), then events.
enum WatchMessage: Sendable {
    case snapshot(
        revision: Int64,
        services: [ServiceResource],
        instances: [InstanceResource],
        policies: [AuthorizationPolicy],
        mesh: MeshSettings,
        routes: [HTTPRoute]
    )
    case event(RegistryEvent)
    /// The roots changed (a CA rotation step): every watcher gets them.
    case trustBundle(TrustBundle)
}

/// The controller's state: the registry, its store, and the watchers. An actor: mutations
/// are applied one at a time, committed to the store, then fanned out to watchers, so a
/// watcher never sees an event the store has not kept.
actor Controller {
    var registry: Registry
    let store: RegistryStore
    /// Rollouts and where each is (`Controller+Rollouts.swift`).
    var rollouts: [String: RolloutEntry] = [:]
    /// Counts rollout transitions and analyses (set by the server).
    var metrics: ControllerMetrics?
    /// The webhook call each rollout waits for: an answer to an older call (before a retry,
    /// an abort or a new spec) is dropped.
    var webhookCalls: [String: UUID] = [:]

    func setMetrics(_ metrics: ControllerMetrics) { self.metrics = metrics }
    let logger: Logger
    private var watchers: [UUID: Watcher] = [:]
    /// Set by `finishWatchers` (shutdown): a watch that arrives later ends at once.
    private var watchesClosed = false
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant
    /// Told the services and instances after every change (the DNS server's snapshot).
    private var changeListener: (@Sendable ([ServiceResource], [InstanceResource], Int64) -> Void)?

    struct Watcher {
        var services: Set<String>?
        /// It reads route events and snapshot routes (`routes=1`).
        var routes: Bool
        var continuation: AsyncStream<WatchMessage>.Continuation
    }

    /// Buffered messages per watcher; a watcher that falls further behind is cut off and
    /// resumes from its last revision when it reconnects.
    static let watcherBuffer = 4096

    init(store: RegistryStore, logger: Logger) throws {
        self.store = store
        self.logger = logger
        self.start = clock.now
        let contents = try store.load()
        self.registry = Registry(
            services: contents.services,
            instances: contents.instances,
            policies: contents.policies,
            mesh: contents.mesh,
            routes: contents.routes,
            revision: contents.revision,
            now: 0
        )
        for entry in try store.loadRollouts() { rollouts[entry.rollout.name] = entry }
    }

    private var now: UInt64 {
        let elapsed = clock.now - start
        return UInt64(max(0, elapsed.components.seconds)) * 1_000_000_000
            + UInt64(max(0, elapsed.components.attoseconds / 1_000_000_000))
    }

    var revision: Int64 { registry.revision }

    // MARK: reads

    func services() -> [ServiceResource] {
        registry.services.values.sorted { $0.name < $1.name }
    }

    func service(_ name: String) -> ServiceResource? { registry.services[name] }

    func instances(service: String?) -> [InstanceResource] {
        if let service { return registry.instances(of: service) }
        return registry.instances.values.sorted { $0.id < $1.id }
    }

    func instance(_ id: String) -> InstanceResource? { registry.instances[id] }

    func leaseRemaining(_ id: String) -> Duration? { registry.leaseRemaining(id, now: now) }

    func policies() -> [AuthorizationPolicy] {
        registry.policies.values.sorted { $0.name < $1.name }
    }

    func policy(_ name: String) -> AuthorizationPolicy? { registry.policies[name] }

    var mesh: MeshSettings { registry.mesh }

    /// Every route with its conditions (`RouteStatus.swift`), computed from the registry now.
    func routes() -> [RouteWithStatus] {
        // Conditions compare every route with the others: computed once per registry
        // revision (instances count too), not once per read of an open API.
        if let cached = routeStatusCache, cached.revision == registry.revision { return cached.routes }
        let routes = registry.routes.values.sorted { $0.name < $1.name }
        let answer = routes.map { withStatus($0, among: routes) }
        routeStatusCache = (registry.revision, answer)
        return answer
    }

    private var routeStatusCache: (revision: Int64, routes: [RouteWithStatus])?

    func route(_ name: String) -> RouteWithStatus? {
        guard registry.routes[name] != nil else { return nil }
        return routes().first { $0.route.name == name }
    }

    private func withStatus(_ route: HTTPRoute, among routes: [HTTPRoute]) -> RouteWithStatus {
        let registry = self.registry
        let conditions = route.conditions(
            among: routes,
            serviceExists: { name in
                registry.services[name] != nil || registry.instances.values.contains { $0.service == name }
            },
            instances: { backend in registry.instances.values.count(where: backend.selects) }
        )
        return RouteWithStatus(route: route, conditions: conditions)
    }

    // MARK: mutations

    func putService(_ service: ServiceResource) throws -> Int64 {
        try commit(registry.putService(service))
    }

    func deleteService(_ name: String) throws -> Int64 {
        try commit(registry.deleteService(name))
    }

    func putInstance(_ instance: InstanceResource) throws -> Int64 {
        try commit(registry.putInstance(instance, now: now))
    }

    func heartbeat(_ id: String, health: InstanceHealth?) throws -> Int64 {
        try commit(registry.heartbeat(id, health: health, now: now))
    }

    func deleteInstance(_ id: String) throws -> Int64 {
        try commit(registry.deleteInstance(id))
    }

    func putPolicy(_ policy: AuthorizationPolicy) throws -> Int64 {
        try commit(registry.putPolicy(policy))
    }

    func deletePolicy(_ name: String) throws -> Int64 {
        try commit(registry.deletePolicy(name))
    }

    /// Routes the registry holds at most: each is pushed to every caller of its parents and
    /// compiled on each of their event loops.
    static let maxRoutes = 10_000

    /// Stores a route; returns it as stored (with its age) and the revision.
    func putRoute(_ route: HTTPRoute) throws -> (HTTPRoute, Int64) {
        guard registry.routes[route.name] != nil || registry.routes.count < Self.maxRoutes else {
            throw APIError(
                status: .conflict,
                message: "the registry holds its limit of \(Self.maxRoutes) routes: delete one first"
            )
        }
        let revision = try commit(registry.putRoute(route))
        return (registry.routes[route.name] ?? route, revision)
    }

    func deleteRoute(_ name: String) throws -> Int64 {
        try commit(registry.deleteRoute(name))
    }

    func putMesh(_ settings: MeshSettings) throws -> Int64 {
        try commit(registry.putMesh(settings))
    }

    /// Removes instances whose lease ran out; called every second.
    func expireLeases() {
        let events = registry.expireLeases(now: now)
        guard !events.isEmpty else { return }
        for event in events {
            logger.info("lease expired", metadata: ["instance": "\(event.instance?.id ?? "")"])
        }
        do {
            _ = try commit(events)
        } catch {
            logger.error("could not store expired leases", metadata: ["error": "\(error)"])
        }
    }

    private func commit(_ events: [RegistryEvent]) throws -> Int64 {
        try store.apply(events)
        for event in events { broadcast(event) }
        if !events.isEmpty { publishChange() }
        return registry.revision
    }

    /// Calls `listener` now and after every change.
    func setChangeListener(_ listener: @escaping @Sendable ([ServiceResource], [InstanceResource], Int64) -> Void) {
        changeListener = listener
        publishChange()
    }

    private func publishChange() {
        changeListener?(Array(registry.services.values), Array(registry.instances.values), registry.revision)
    }

    // MARK: watches

    /// A stream that starts with what the watcher needs — the events after `revision`
    /// when the history still has them, else a snapshot — and then every change, for the
    /// given services (all when nil).
    func watch(services: Set<String>?, after revision: Int64?, routes: Bool = true) -> AsyncStream<WatchMessage> {
        let (stream, continuation) = AsyncStream<WatchMessage>.makeStream(
            bufferingPolicy: .bufferingOldest(Self.watcherBuffer)
        )
        guard !watchesClosed else {
            // Shutting down: a client that re-watched on its kept-alive connection right
            // after its stream was ended must not hold the server open (it waited forever).
            continuation.finish()
            return stream
        }
        if let revision, let missed = registry.events(after: revision) {
            for event in missed where event.concerns(services) && (routes || event.route == nil) {
                continuation.yield(.event(event))
            }
        } else {
            let snapshotServices = self.services().filter { services?.contains($0.name) ?? true }
            let snapshotInstances = registry.instances.values
                .filter { services?.contains($0.service) ?? true }
                .sorted { $0.id < $1.id }
            let snapshotPolicies = registry.policies.values
                .filter { services?.contains($0.target) ?? true }
                .sorted { $0.name < $1.name }
            let snapshotRoutes = registry.routes.values
                .filter { route in services.map(route.concerns) ?? true }
                .sorted { $0.name < $1.name }
            continuation.yield(
                .snapshot(
                    revision: registry.revision,
                    services: snapshotServices,
                    instances: snapshotInstances,
                    policies: snapshotPolicies,
                    mesh: registry.mesh,
                    routes: routes ? snapshotRoutes : []
                )
            )
        }
        let id = UUID()
        watchers[id] = Watcher(services: services, routes: routes, continuation: continuation)
        continuation.onTermination = { _ in
            Task { await self.removeWatcher(id) }
        }
        return stream
    }

    private func removeWatcher(_ id: UUID) {
        watchers[id] = nil
    }

    var watcherCount: Int { watchers.count }

    /// Ends every watch stream (shutdown): clients reconnect, to this controller once it is
    /// back or to another.
    func finishWatchers() {
        watchesClosed = true
        for watcher in watchers.values { watcher.continuation.finish() }
        watchers.removeAll()
    }

    /// Sends a new trust bundle to every watcher.
    func broadcast(_ bundle: TrustBundle) {
        for (id, watcher) in watchers {
            if case .dropped = watcher.continuation.yield(.trustBundle(bundle)) {
                watcher.continuation.finish()
                watchers[id] = nil
            }
        }
    }

    private func broadcast(_ event: RegistryEvent) {
        for (id, watcher) in watchers where event.concerns(watcher.services) && (watcher.routes || event.route == nil) {
            if case .dropped = watcher.continuation.yield(.event(event)) {
                logger.warning("watcher fell behind; closing it so it resumes from its revision")
                watcher.continuation.finish()
                watchers[id] = nil
            }
        }
    }
}

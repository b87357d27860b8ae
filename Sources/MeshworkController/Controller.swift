import Foundation
import HTTPTypes
import Logging
import MeshworkModel
import NIOCore
import ServiceLifecycle
import Synchronization

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
    case event(SharedEvent)
    /// Every 10 s (`pingWatchers`): keeps idle connections (and proxies) alive and tells
    /// the client the revision.
    case ping(revision: Int64)
    /// The roots changed (a CA rotation step): every watcher gets them.
    case trustBundle(TrustBundle)
}

/// The controller's state: the registry as the store holds it, and the watchers.
///
/// Every mutation is a store commit; the registry changes only by following the store's
/// change stream (`follow`), in revision order, whoever committed. So a controller sees
/// its own writes and other controllers' alike, every event carries the store's revision
/// (the same on every controller: a watcher resumes on any of them), and a watcher never
/// sees a change the store has not kept. A mutation answers once its commit is applied
/// here (read-your-writes). Mutations run one at a time (`exclusively`): each decides
/// from the state the one before it left; except that those of different instances
/// (registrations, heartbeats, deregistrations: `exclusively(instance:)`) run side by side,
/// so their commits share the store's fsyncs.
actor Controller {
    var registry: Registry
    let store: any ControllerStore
    /// Rollouts and where each is (`Controller+Rollouts.swift`), with the revision of each
    /// one's document (a write is conditional on it: another controller's write wins).
    var rollouts: [String: RolloutEntry] = [:]
    var rolloutRevisions: [String: Int64] = [:]
    /// Counts rollout transitions and analyses (set by the server).
    var metrics: ControllerMetrics?
    /// The webhook call each rollout waits for: an answer to an older call (before a retry,
    /// an abort or a new spec) is dropped.
    var webhookCalls: [String: UUID] = [:]
    /// The store lease each instance with a TTL lives under: a heartbeat renews it, and
    /// the store deletes the instance when it is not renewed in time.
    private var instanceLeases: [String: Int64] = [:]
    /// The term this controller leads in (nil: another leads), the fence of the rollout
    /// steps it writes (`Controller+Leadership.swift`).
    var term: StoreTerm?
    /// This controller's name in the election; who leads, as the store's change stream
    /// says; each controller's API URL (`member` documents): where telemetry goes.
    var name = ""
    private(set) var leaderName: String?
    private(set) var members: [String: String] = [:]
    /// Instances this controller is deleting (so their leaving is not logged as a lease
    /// that ran out).
    private var deleting: Set<String> = []

    func setMetrics(_ metrics: ControllerMetrics) { self.metrics = metrics }
    let logger: Logger
    private var watchers: [UUID: Watcher] = [:]
    /// Set by `finishWatchers` (shutdown): a watch that arrives later ends at once.
    private var watchesClosed = false
    /// Told the services and instances after every change (the DNS server's snapshot).
    /// Told, after each change, the services it touched (nil: everything) and their
    /// services and instances as they are now.
    typealias ChangeListener = @Sendable (Set<String>?, [ServiceResource], [InstanceResource], Int64) -> Void
    private var changeListener: ChangeListener?
    /// The store revision applied here, and who waits for a later one.
    private(set) var appliedRevision: Int64
    private var revisionWaiters = RevisionWaiters()
    /// The task reading the store's change stream now (cancelled to open it again).
    private var following: Task<Void, any Error>?
    /// A mutation of everything runs (`exclusively`).
    private var mutatingAll = false
    /// The instances being mutated now (`exclusively(instance:)`).
    private var mutatingInstances: Set<String> = []
    /// Mutations waiting, in arrival order.
    private var mutationQueue: [(instance: String?, resume: CheckedContinuation<Void, Never>)] = []
    /// Services being created by a registration, with the registrations waiting for it.
    private var serviceCreations: [String: [CheckedContinuation<Void, Never>]] = [:]

    struct Watcher {
        var services: Set<String>?
        /// It reads route events and snapshot routes (`routes=1`).
        var routes: Bool
        var continuation: AsyncStream<WatchMessage>.Continuation
    }

    /// Buffered messages per watcher; a watcher that falls further behind is cut off and
    /// resumes from its last revision when it reconnects.
    static let watcherBuffer = 4096

    /// The state as `snapshot` has it; `follow()` keeps it current.
    init(store: any ControllerStore, snapshot: StoreSnapshot, logger: Logger) throws {
        self.store = store
        self.logger = logger
        let state = try ControllerState(snapshot: snapshot)
        self.appliedRevision = snapshot.revision
        self.registry = state.registry
        self.instanceLeases = state.leases
        self.rollouts = state.rollouts
        self.rolloutRevisions = state.rolloutRevisions
        self.leaderName = state.leaderName
        self.members = state.members
    }

    var revision: Int64 { registry.revision }

    func setName(_ name: String) { self.name = name }

    /// The leader's API URL when another controller leads and said where it listens: the
    /// home of telemetry (`TelemetryRelay`); nil when this one leads (or nobody does).
    func telemetryHome() -> String? {
        guard term == nil, let leaderName, leaderName != name else { return nil }
        return members[leaderName]
    }

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

    func putService(_ service: ServiceResource) async throws -> Int64 {
        try await exclusively {
            guard registry.services[service.name] != service else { return registry.revision }
            var write = StoreWrite()
            try write.put(RegistryDocuments.key(service: service.name), json: service)
            return try await commit(write)
        }
    }

    func deleteService(_ name: String) async throws -> Int64 {
        try await exclusively {
            guard registry.services[name] != nil else { throw RegistryError.notFound("service \"\(name)\"") }
            // The instances first, then the service (a store commits at most
            // `StoreWrite.maxOperations` at once: a large service takes several commits).
            let groups =
                registry.instances(of: name).map {
                    [StoreWrite.Operation.delete(RegistryDocuments.key(instance: $0.id))]
                }
                + [[.delete(RegistryDocuments.key(service: name))]]
            let leases = registry.instances(of: name).compactMap { instanceLeases[$0.id] }
            let ids = registry.instances(of: name).map(\.id)
            deleting.formUnion(ids)
            defer { deleting.subtract(ids) }
            var revision = registry.revision
            for write in StoreWrite.split(groups) { revision = try await commit(write) }
            for lease in leases { try? await store.revokeLease(lease) }
            return revision
        }
    }

    /// Registers or updates an instance and renews its lease: the lease it has when it
    /// is still alive and of the same TTL, else a new one (the old one ends).
    func putInstance(_ instance: InstanceResource) async throws -> Int64 {
        try await exclusively(instance: instance.id) {
            let existing = instanceLeases[instance.id]
            var lease: Int64 = 0
            var retired: Int64?
            if instance.ttlSeconds > 0 {
                if let existing, registry.instances[instance.id]?.ttlSeconds == instance.ttlSeconds,
                    try await storeCall({ try await store.keepAlive(existing) })
                {
                    lease = existing
                } else {
                    lease = try await storeCall { try await store.grantLease(ttl: Int64(instance.ttlSeconds)) }
                    retired = existing
                }
            } else {
                retired = existing
            }
            // Registrations of a service that does not exist yet wait for the one creating
            // it (instead of all conflicting on it), then go alone.
            while registry.services[instance.service] == nil, serviceCreations[instance.service] != nil {
                await withCheckedContinuation { serviceCreations[instance.service, default: []].append($0) }
            }
            let creating = registry.services[instance.service] == nil
            if creating { serviceCreations[instance.service] = [] }
            defer {
                if creating {
                    for waiting in serviceCreations.removeValue(forKey: instance.service) ?? [] { waiting.resume() }
                }
            }
            var revision = registry.revision
            for attempt in 1...3 {
                var write = StoreWrite()
                if registry.services[instance.service] == nil {
                    // A service that does not exist yet is created with the defaults (a
                    // sidecar may register before an operator has described its service),
                    // only if it still does not: one an operator just described through
                    // another controller is not overwritten with the defaults.
                    let key = RegistryDocuments.key(service: instance.service)
                    write.conditions.append(.absent(key))
                    try write.put(key, json: ServiceResource(name: instance.service))
                }
                if registry.instances[instance.id] != instance || existing != lease {
                    try write.put(RegistryDocuments.key(instance: instance.id), json: instance, lease: lease)
                }
                guard !write.operations.isEmpty else { break }
                do {
                    revision = try await commit(write)
                    break
                } catch let error as APIError where error.status == .conflict && attempt < 3 {
                    // The service was created meanwhile: once it is applied here, the
                    // instance goes alone.
                    try await Task.sleep(for: .milliseconds(50 * attempt))
                }
            }
            if let retired, retired != lease { try? await store.revokeLease(retired) }
            return revision
        }
    }

    /// Renews an instance's lease and, when given, records the health its checks report.
    /// An instance whose lease ended is gone (its sidecar registers again).
    func heartbeat(_ id: String, health: InstanceHealth?) async throws -> Int64 {
        try await exclusively(instance: id) {
            guard var instance = registry.instances[id] else { throw RegistryError.notFound("instance \"\(id)\"") }
            let lease = instanceLeases[id] ?? 0
            if lease != 0, try await !storeCall({ try await store.keepAlive(lease) }) {
                throw RegistryError.notFound("instance \"\(id)\" (its lease ended)")
            }
            // Read again after the renewal: a registration applied meanwhile (through
            // another controller) is not written back as it was.
            guard let current = registry.instances[id] else { throw RegistryError.notFound("instance \"\(id)\"") }
            instance = current
            guard let health, health != instance.health else { return registry.revision }
            instance.health = health
            var write = StoreWrite(conditions: [])
            try write.put(RegistryDocuments.key(instance: id), json: instance, lease: lease)
            return try await commit(write)
        }
    }

    func deleteInstance(_ id: String) async throws -> Int64 {
        try await exclusively(instance: id) {
            guard registry.instances[id] != nil else { throw RegistryError.notFound("instance \"\(id)\"") }
            var write = StoreWrite()
            write.delete(RegistryDocuments.key(instance: id))
            let lease = instanceLeases[id]
            deleting.insert(id)
            defer { deleting.remove(id) }
            let revision = try await commit(write)
            if let lease { try? await store.revokeLease(lease) }
            return revision
        }
    }

    func putPolicy(_ policy: AuthorizationPolicy) async throws -> Int64 {
        try await exclusively {
            guard registry.policies[policy.name] != policy else { return registry.revision }
            var write = StoreWrite()
            try write.put(RegistryDocuments.key(policy: policy.name), json: policy)
            return try await commit(write)
        }
    }

    func deletePolicy(_ name: String) async throws -> Int64 {
        try await exclusively {
            guard registry.policies[name] != nil else { throw RegistryError.notFound("policy \"\(name)\"") }
            var write = StoreWrite()
            write.delete(RegistryDocuments.key(policy: name))
            return try await commit(write)
        }
    }

    /// Routes the registry holds at most: each is pushed to every caller of its parents and
    /// compiled on each of their event loops.
    static let maxRoutes = 10_000

    /// Stores a route; returns it as stored (with its age) and the revision.
    func putRoute(_ route: HTTPRoute) async throws -> (HTTPRoute, Int64) {
        try await exclusively { try await putRouteNow(route) }
    }

    /// `putRoute` for a caller that runs exclusively already (a rollout's step).
    func putRouteNow(_ route: HTTPRoute, fence: StoreTerm? = nil) async throws -> (HTTPRoute, Int64) {
        guard registry.routes[route.name] != nil || registry.routes.count < Self.maxRoutes else {
            throw APIError(
                status: .conflict,
                message: "the registry holds its limit of \(Self.maxRoutes) routes: delete one first"
            )
        }
        var route = route
        route.created = registry.routes[route.name]?.created ?? 0
        if let stored = registry.routes[route.name], stored == route { return (stored, registry.revision) }
        var write = StoreWrite(fence: fence)
        try write.put(RegistryDocuments.key(route: route.name), json: route)
        let revision = try await commit(write)
        return (registry.routes[route.name] ?? route, revision)
    }

    func deleteRoute(_ name: String) async throws -> Int64 {
        try await exclusively { try await deleteRouteNow(name) }
    }

    func deleteRouteNow(_ name: String) async throws -> Int64 {
        guard registry.routes[name] != nil else { throw RegistryError.notFound("route \"\(name)\"") }
        var write = StoreWrite()
        write.delete(RegistryDocuments.key(route: name))
        return try await commit(write)
    }

    func putMesh(_ settings: MeshSettings) async throws -> Int64 {
        try await exclusively {
            guard settings != registry.mesh else { return registry.revision }
            var write = StoreWrite()
            try write.put(RegistryDocuments.key(setting: "mesh"), json: settings)
            return try await commit(write)
        }
    }

    /// Runs `body` after every mutation before it has finished, and before any after it.
    func exclusively<T>(_ body: () async throws -> T) async throws -> T {
        if mutatingAll || !mutatingInstances.isEmpty || !mutationQueue.isEmpty {
            await withCheckedContinuation { mutationQueue.append((nil, $0)) }
        } else {
            mutatingAll = true
        }
        defer {
            mutatingAll = false
            admitMutations()
        }
        return try await body()
    }

    /// Runs `body`, a mutation of instance `id` alone, after every mutation before it of
    /// everything or of `id`, and before any after it of those; beside mutations of other
    /// instances.
    func exclusively<T>(instance id: String, _ body: () async throws -> T) async throws -> T {
        if mutatingAll || mutatingInstances.contains(id)
            || mutationQueue.contains(where: { $0.instance == nil || $0.instance == id })
        {
            await withCheckedContinuation { mutationQueue.append((id, $0)) }
        } else {
            mutatingInstances.insert(id)
        }
        defer {
            mutatingInstances.remove(id)
            admitMutations()
        }
        return try await body()
    }

    /// Lets waiting mutations run, in arrival order: an instance's while nothing of
    /// everything is ahead of it and its instance is free; one of everything once nothing
    /// else runs (and nothing behind it passes it).
    private func admitMutations() {
        guard !mutatingAll else { return }
        var index = 0
        var blocked: Set<String> = []
        while index < mutationQueue.count {
            let waiting = mutationQueue[index]
            guard let id = waiting.instance else {
                guard mutatingInstances.isEmpty, index == 0 else { return }
                mutationQueue.removeFirst()
                mutatingAll = true
                waiting.resume.resume()
                return
            }
            if mutatingInstances.contains(id) || blocked.contains(id) {
                blocked.insert(id)
                index += 1
                continue
            }
            mutationQueue.remove(at: index)
            mutatingInstances.insert(id)
            waiting.resume.resume()
        }
    }

    /// Commits `write` and waits until it is applied here; the revision it made (the one
    /// applied here when the write changed nothing).
    func commit(_ write: StoreWrite) async throws -> Int64 {
        let revision = try await storeCall { try await store.commit(write) }
        guard revision != 0 else { return appliedRevision }
        try await applied(revision)
        return revision
    }

    /// A store call, its failure said as the API says it: a store that cannot commit is
    /// a 503 (nothing is known to have landed), a condition that failed a 409.
    func storeCall<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StoreError {
            switch error.code {
            case .conflict:
                throw APIError(status: .conflict, message: "changed concurrently (\(error.message)): try again")
            case .fenced:
                throw APIError(
                    status: .serviceUnavailable,
                    message: "this controller no longer leads: \(error.message)"
                )
            case .unavailable, .compacted:
                throw APIError(status: .serviceUnavailable, message: "the store cannot commit now: \(error.message)")
            case .corrupt, .tooLarge:
                throw APIError(status: .internalServerError, message: error.message)
            }
        }
    }

    /// Returns once the store's revision `revision` is applied here; a 503 when it was
    /// not within `RevisionWaiters.timeout` (the change stream is opened again).
    func applied(_ revision: Int64) async throws {
        guard appliedRevision < revision else { return }
        let id = revisionWaiters.reserve()
        let timer = Task { [weak self] in
            try await Task.sleep(for: RevisionWaiters.timeout)
            await self?.appliedTimedOut(id)
        }
        let seen = await withCheckedContinuation { revisionWaiters.add(id, revision, $0) }
        timer.cancel()
        guard seen else {
            throw APIError(
                status: .serviceUnavailable,
                message: "the write landed at revision \(revision), but this controller has not seen it yet"
            )
        }
    }

    private func appliedTimedOut(_ id: Int) {
        guard revisionWaiters.expire(id) else { return }
        logger.warning("a commit did not come back through the store's change stream: opening it again")
        following?.cancel()
    }

    // MARK: following the store

    /// Applies the store's changes as they come, for as long as the controller runs: a
    /// broken stream is opened again from the last revision applied; a history that no
    /// longer reaches back that far is read whole again (watchers get a snapshot).
    func follow() async {
        defer { revisionWaiters.releaseAll() }
        while !Task.isCancelled {
            do {
                let stream = store.changes(after: appliedRevision)
                let current = Task {
                    for try await batch in stream { await self.apply(batch) }
                }
                following = current
                try await withTaskCancellationHandler {
                    try await current.value
                } onCancel: {
                    current.cancel()
                }
            } catch is CancellationError {
                // This task's own cancellation, or `appliedTimedOut` restarting the stream.
                if Task.isCancelled { return }
            } catch let error as StoreError where error.code == .compacted {
                logger.warning("the store's history moved past this controller: reading it whole")
                do {
                    try await reload(try await store.load())
                } catch {
                    logger.error("cannot read the store", metadata: ["error": "\(error)"])
                }
            } catch {
                if Task.isCancelled || watchesClosed || Task.isShuttingDownGracefully { return }
                logger.warning("the store's change stream broke: following it again", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    /// One commit, as events at its revision for watchers, the DNS zone and waiters.
    func apply(_ batch: StoreChanges) {
        guard batch.revision > appliedRevision else { return }
        var events: [RegistryEvent] = []
        // The services the batch touched (an instance moved between two touches both).
        var touched = Set<String>()
        events = registry.applying(at: batch.revision) { registry in
            var events: [RegistryEvent] = []
            for change in batch.changes {
                switch change.key.collection {
                case .service: touched.insert(change.key.name)
                case .instance:
                    if let old = registry.instances[change.key.name]?.service { touched.insert(old) }
                default: break
                }
                do {
                    events += try applyChange(change, at: batch.revision, to: &registry)
                    if change.key.collection == .instance, let now = registry.instances[change.key.name]?.service {
                        touched.insert(now)
                    }
                } catch {
                    logger.error(
                        "a stored change is not readable",
                        metadata: ["key": "\(change.key)", "error": "\(error)"]
                    )
                }
            }
            return events
        }
        appliedRevision = batch.revision
        for event in events { broadcast(event) }
        if !events.isEmpty { publishChange(touched) }
        revisionWaiters.release(through: batch.revision)
    }

    private func applyChange(
        _ change: StoreChange,
        at revision: Int64,
        to registry: inout Registry
    ) throws -> [RegistryEvent] {
        let key = change.key
        switch key.collection {
        case .service:
            guard let body = change.body else { return (try? registry.deleteService(key.name)) ?? [] }
            return registry.putService(try RegistryDocuments.service(body, key: key))
        case .instance:
            guard let body = change.body else {
                let lease = instanceLeases.removeValue(forKey: key.name)
                guard registry.instances[key.name] != nil else { return [] }
                // Not deleted here: the store ended its lease (or, with several
                // controllers, another one deleted it).
                let expired = lease != nil && !deleting.contains(key.name)
                logger.info(expired ? "lease expired" : "instance deleted", metadata: ["instance": "\(key.name)"])
                return (try? registry.deleteInstance(key.name)) ?? []
            }
            instanceLeases[key.name] = change.lease == 0 ? nil : change.lease
            return registry.putInstance(try RegistryDocuments.instance(body, key: key), now: 0)
        case .policy:
            guard let body = change.body else { return (try? registry.deletePolicy(key.name)) ?? [] }
            return registry.putPolicy(try RegistryDocuments.policy(body, key: key))
        case .route:
            guard let body = change.body else { return (try? registry.deleteRoute(key.name)) ?? [] }
            return registry.putRoute(try RegistryDocuments.route(body, key: key, created: change.created))
        case .setting where key.name == "mesh":
            return registry.putMesh(try change.body.map { try RegistryDocuments.mesh($0, key: key) } ?? MeshSettings())
        case .leader:
            leaderName = change.body.map { String(decoding: $0, as: UTF8.self) }
            return []
        case .member:
            members[key.name] = try change.body.map { try StoreCoding.decode(MemberDocument.self, $0, key: key).url }
            return []
        case .rollout:
            if let body = change.body {
                rollouts[key.name] = try RegistryDocuments.rollout(body, key: key)
                rolloutRevisions[key.name] = revision
            } else {
                rollouts[key.name] = nil
                rolloutRevisions[key.name] = nil
                webhookCalls[key.name] = nil
            }
            return []
        default:
            return []
        }
    }

    /// Reads the whole store again (after its history moved past this controller): the
    /// registry starts over from it, and every watcher resumes with a snapshot.
    private func reload(_ snapshot: StoreSnapshot) async throws {
        let fresh = try ControllerState(snapshot: snapshot)
        registry = fresh.registry
        instanceLeases = fresh.leases
        rollouts = fresh.rollouts
        rolloutRevisions = fresh.rolloutRevisions
        leaderName = fresh.leaderName
        members = fresh.members
        appliedRevision = snapshot.revision
        for watcher in watchers.values { watcher.continuation.finish() }
        watchers.removeAll()
        publishChange()
        revisionWaiters.release(through: snapshot.revision)
    }

    /// Calls `listener` now and after every change.
    func setChangeListener(_ listener: @escaping ChangeListener) {
        changeListener = listener
        publishChange()
    }

    private func publishChange(_ touched: Set<String>? = nil) {
        guard let changeListener else { return }
        guard let touched else {
            return changeListener(
                nil,
                Array(registry.services.values),
                Array(registry.instances.values),
                registry.revision
            )
        }
        let services = touched.compactMap { registry.services[$0] }
        let instances = touched.flatMap { registry.instances(of: $0) }
        changeListener(touched, services, instances, registry.revision)
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
                continuation.yield(.event(SharedEvent(event)))
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

    /// A ping to every watcher (one ticker for all of them, not a timer task each).
    func pingWatchers() {
        for (id, watcher) in watchers {
            if case .dropped = watcher.continuation.yield(.ping(revision: registry.revision)) {
                watcher.continuation.finish()
                watchers[id] = nil
            }
        }
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
        guard !watchers.isEmpty else { return }
        // (One event, encoded once for every watcher it goes to.)
        let shared = SharedEvent(event)
        for (id, watcher) in watchers where event.concerns(watcher.services) && (watcher.routes || event.route == nil) {
            if case .dropped = watcher.continuation.yield(.event(shared)) {
                logger.warning("watcher fell behind; closing it so it resumes from its revision")
                watcher.continuation.finish()
                watchers[id] = nil
            }
        }
    }
}

/// A registry event on its way to watchers: its watch line (NDJSON, sorted keys) is
/// encoded by the first watcher that writes it and shared by the others (a change seen by
/// 1,000 watchers is encoded once, not 1,000 times).
final class SharedEvent: Sendable {
    let event: RegistryEvent
    private let encoded = Mutex<ByteBuffer?>(nil)

    init(_ event: RegistryEvent) {
        self.event = event
    }

    func line() throws -> ByteBuffer {
        try encoded.withLock { encoded in
            if let encoded { return encoded }
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            var data = try encoder.encode(ControllerAPI.WatchEventLine(event: event))
            data.append(0x0A)
            let buffer = ByteBuffer(bytes: data)
            encoded = buffer
            return buffer
        }
    }
}

/// What the controller holds, read from a store snapshot.
struct ControllerState {
    var registry: Registry
    var leases: [String: Int64] = [:]
    var rollouts: [String: RolloutEntry] = [:]
    var rolloutRevisions: [String: Int64] = [:]
    var leaderName: String?
    var members: [String: String] = [:]

    init(snapshot: StoreSnapshot) throws {
        var services: [ServiceResource] = []
        var instances: [InstanceResource] = []
        var policies: [AuthorizationPolicy] = []
        var routes: [HTTPRoute] = []
        var mesh = MeshSettings()
        for document in snapshot.documents {
            let key = document.key
            switch key.collection {
            case .service: services.append(try RegistryDocuments.service(document.body, key: key))
            case .instance:
                instances.append(try RegistryDocuments.instance(document.body, key: key))
                if document.lease != 0 { leases[key.name] = document.lease }
            case .policy: policies.append(try RegistryDocuments.policy(document.body, key: key))
            case .route: routes.append(try RegistryDocuments.route(document.body, key: key, created: document.created))
            case .setting where key.name == "mesh": mesh = try RegistryDocuments.mesh(document.body, key: key)
            case .rollout:
                rollouts[key.name] = try RegistryDocuments.rollout(document.body, key: key)
                rolloutRevisions[key.name] = document.revision
            case .leader: leaderName = String(decoding: document.body, as: UTF8.self)
            case .member: members[key.name] = try StoreCoding.decode(MemberDocument.self, document.body, key: key).url
            default: continue
            }
        }
        registry = Registry(
            services: services,
            instances: instances,
            policies: policies,
            mesh: mesh,
            routes: routes,
            revision: snapshot.revision,
            now: 0
        )
    }
}

/// A controller's `member` document: where its API listens.
struct MemberDocument: Codable, Sendable {
    var url: String
}

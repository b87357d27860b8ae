/// A change to the registry, as watchers receive it: tagged with the registry's revision
/// after the change. Deletions carry the resource as it was, so a watcher filtering by
/// service can tell whose instance went away.
public struct RegistryEvent: Sendable, Hashable, Encodable {
    public enum Kind: String, Sendable, Hashable, Codable {
        case servicePut = "service-put"
        case serviceDeleted = "service-deleted"
        case instancePut = "instance-put"
        case instanceDeleted = "instance-deleted"
        case policyPut = "policy-put"
        case policyDeleted = "policy-deleted"
        case meshPut = "mesh-put"
        case routePut = "route-put"
        case routeDeleted = "route-deleted"
    }

    public var revision: Int64
    public var kind: Kind
    public var service: ServiceResource?
    public var instance: InstanceResource?
    public var policy: AuthorizationPolicy?
    public var mesh: MeshSettings?
    public var route: HTTPRoute?

    public init(
        revision: Int64,
        kind: Kind,
        service: ServiceResource? = nil,
        instance: InstanceResource? = nil,
        policy: AuthorizationPolicy? = nil,
        mesh: MeshSettings? = nil,
        route: HTTPRoute? = nil
    ) {
        self.revision = revision
        self.kind = kind
        self.service = service
        self.instance = instance
        self.policy = policy
        self.mesh = mesh
        self.route = route
    }

    /// The service this event concerns (for filtering watches); empty for mesh-wide
    /// events, which every watcher gets.
    public var serviceName: String {
        service?.name ?? instance?.service ?? policy?.target ?? route?.parents.first ?? ""
    }

    /// Whether a watcher of `services` (all when nil) gets this event: a route's, when it
    /// watches one of the route's parents (the callers of a service apply its routes).
    public func concerns(_ services: Set<String>?) -> Bool {
        guard let services else { return true }
        if let route { return route.concerns(services) }
        let name = serviceName
        return name.isEmpty || services.contains(name)
    }
}

/// Why a registry operation was refused.
public enum RegistryError: Error, Hashable, Sendable {
    case notFound(String)
}

/// The registry of services and instances with leases, as a value with an injected clock
/// (`now` in nanoseconds): every mutation returns the events it caused, each with the next
/// revision, and the last `historyLimit` events are kept so a watcher that reconnects with
/// its last revision gets exactly what it missed.
public struct Registry: Sendable {
    public private(set) var services: [String: ServiceResource] = [:]
    public private(set) var instances: [String: InstanceResource] = [:]
    /// Each service's instance ids: `instances(of:)` is a lookup, not a scan of the
    /// registry (a change costs in proportion to its service). Kept by `setInstance` and
    /// `removeInstance`, the only writers of `instances`.
    private var idsByService: [String: Set<String>] = [:]
    public private(set) var policies: [String: AuthorizationPolicy] = [:]
    public private(set) var mesh = MeshSettings()
    public private(set) var routes: [String: HTTPRoute] = [:]
    public private(set) var revision: Int64
    /// Lease deadlines (nanoseconds) of instances that have a TTL.
    private var leases: [String: UInt64] = [:]
    private var history: [RegistryEvent] = []
    /// The history holds every event after this revision (the revision the registry was
    /// restored at, or the last one dropped from the history).
    private var historyFloor: Int64
    /// Set while a store commit is applied (`applying(at:)`): every event it causes carries
    /// the commit's revision, not one of its own.
    private var commitRevision: Int64?
    public let historyLimit: Int

    /// - Parameters:
    ///   - services, instances, revision: state restored from the store; instances with a
    ///     TTL get a fresh lease from `now` (their sidecars heartbeat again within it).
    public init(
        services: [ServiceResource] = [],
        instances: [InstanceResource] = [],
        policies: [AuthorizationPolicy] = [],
        mesh: MeshSettings = MeshSettings(),
        routes: [HTTPRoute] = [],
        revision: Int64 = 0,
        now: UInt64,
        historyLimit: Int = 10_000
    ) {
        self.revision = revision
        self.historyFloor = revision
        self.mesh = mesh
        for route in routes { self.routes[route.name] = route }
        for policy in policies { self.policies[policy.name] = policy }
        self.historyLimit = max(1, historyLimit)
        for service in services { self.services[service.name] = service }
        for instance in instances {
            setInstance(instance)
            if instance.ttlSeconds > 0 { leases[instance.id] = now &+ Self.nanos(instance.ttlSeconds) }
        }
    }

    // MARK: services

    /// Creates or replaces a service; no event when nothing changed.
    public mutating func putService(_ service: ServiceResource) -> [RegistryEvent] {
        guard services[service.name] != service else { return [] }
        services[service.name] = service
        return [record(.servicePut, service: service)]
    }

    /// Deletes a service and its instances.
    public mutating func deleteService(_ name: String) throws(RegistryError) -> [RegistryEvent] {
        guard let service = services.removeValue(forKey: name) else { throw .notFound("service \"\(name)\"") }
        var events: [RegistryEvent] = []
        for instance in self.instances(of: name) {
            removeInstance(instance.id)
            leases[instance.id] = nil
            events.append(record(.instanceDeleted, instance: instance))
        }
        events.append(record(.serviceDeleted, service: service))
        return events
    }

    // MARK: instances

    /// Registers or updates an instance and renews its lease. A service that does not
    /// exist yet is created with the defaults (a sidecar may register before an operator
    /// has described its service).
    public mutating func putInstance(_ instance: InstanceResource, now: UInt64) -> [RegistryEvent] {
        var events: [RegistryEvent] = []
        if services[instance.service] == nil {
            events += putService(ServiceResource(name: instance.service))
        }
        if let old = instances[instance.id], old.service != instance.service {
            // Moving an id to another service: watchers of the old one see it leave.
            removeInstance(instance.id)
            events.append(record(.instanceDeleted, instance: old))
        }
        if instance.ttlSeconds > 0 {
            leases[instance.id] = now &+ Self.nanos(instance.ttlSeconds)
        } else {
            leases[instance.id] = nil
        }
        if instances[instance.id] != instance {
            setInstance(instance)
            events.append(record(.instancePut, instance: instance))
        }
        return events
    }

    /// Renews an instance's lease and, when given, records the health its checks report.
    public mutating func heartbeat(
        _ id: String,
        health: InstanceHealth?,
        now: UInt64
    ) throws(RegistryError) -> [RegistryEvent] {
        guard var instance = instances[id] else { throw .notFound("instance \"\(id)\"") }
        if instance.ttlSeconds > 0 { leases[id] = now &+ Self.nanos(instance.ttlSeconds) }
        guard let health, health != instance.health else { return [] }
        instance.health = health
        setInstance(instance)
        return [record(.instancePut, instance: instance)]
    }

    public mutating func deleteInstance(_ id: String) throws(RegistryError) -> [RegistryEvent] {
        guard let instance = removeInstance(id) else { throw .notFound("instance \"\(id)\"") }
        leases[id] = nil
        return [record(.instanceDeleted, instance: instance)]
    }

    /// Removes every instance whose lease ran out by `now`.
    public mutating func expireLeases(now: UInt64) -> [RegistryEvent] {
        let expired = leases.filter { $0.value <= now }.keys.sorted()
        var events: [RegistryEvent] = []
        for id in expired {
            leases[id] = nil
            if let instance = removeInstance(id) {
                events.append(record(.instanceDeleted, instance: instance))
            }
        }
        return events
    }

    /// Time left on an instance's lease (nil: no lease or no such instance).
    public func leaseRemaining(_ id: String, now: UInt64) -> Duration? {
        guard let deadline = leases[id] else { return nil }
        return .nanoseconds(Int64(deadline > now ? deadline - now : 0))
    }

    // MARK: policy

    /// Creates or replaces an authorization policy; no event when nothing changed.
    public mutating func putPolicy(_ policy: AuthorizationPolicy) -> [RegistryEvent] {
        guard policies[policy.name] != policy else { return [] }
        var events: [RegistryEvent] = []
        if let old = policies[policy.name], old.target != policy.target {
            // Retargeted: the old target's sidecars see it go.
            events.append(record(.policyDeleted, policy: old))
        }
        policies[policy.name] = policy
        events.append(record(.policyPut, policy: policy))
        return events
    }

    public mutating func deletePolicy(_ name: String) throws(RegistryError) -> [RegistryEvent] {
        guard let policy = policies.removeValue(forKey: name) else { throw .notFound("policy \"\(name)\"") }
        return [record(.policyDeleted, policy: policy)]
    }

    // MARK: routes

    /// Creates or replaces a route; its age (`created`) is the revision it was first put
    /// at, kept across updates. No event when nothing changed.
    public mutating func putRoute(_ route: HTTPRoute) -> [RegistryEvent] {
        var route = route
        // Applying a store commit, the age is the route document's own (the store's
        // creation revision, the same for every controller).
        if commitRevision == nil { route.created = routes[route.name]?.created ?? revision + 1 }
        guard routes[route.name] != route else { return [] }
        var events: [RegistryEvent] = []
        if let old = routes[route.name],
            !Set(old.parents).isSubset(of: route.parents) || !Set(old.gateways).isSubset(of: route.gateways)
        {
            // A parent dropped: its callers (or gateway) see the route go.
            var gone = old
            gone.parents = old.parents.filter { !route.parents.contains($0) }
            gone.gateways = old.gateways.filter { !route.gateways.contains($0) }
            events.append(record(.routeDeleted, route: gone))
        }
        routes[route.name] = route
        events.append(record(.routePut, route: route))
        return events
    }

    public mutating func deleteRoute(_ name: String) throws(RegistryError) -> [RegistryEvent] {
        guard let route = routes.removeValue(forKey: name) else { throw .notFound("route \"\(name)\"") }
        return [record(.routeDeleted, route: route)]
    }

    public mutating func putMesh(_ settings: MeshSettings) -> [RegistryEvent] {
        guard settings != mesh else { return [] }
        mesh = settings
        return [record(.meshPut, mesh: settings)]
    }

    // MARK: reading

    /// The events after `revision`, in order; nil when the history no longer reaches back
    /// that far (or the revision is from the future): the watcher needs a fresh snapshot.
    public func events(after revision: Int64) -> [RegistryEvent]? {
        if revision == self.revision { return [] }
        guard revision < self.revision, revision >= historyFloor else { return nil }
        // Revisions only grow along the history, but neither one per event (a commit's
        // events share its revision) nor without gaps (store commits that changed nothing
        // watchers see): the first event after `revision`, by bisection.
        var low = 0
        var high = history.count
        while low < high {
            let middle = (low + high) / 2
            if history[middle].revision <= revision { low = middle + 1 } else { high = middle }
        }
        return Array(history[low...])
    }

    /// Applies one store commit: the mutations `body` makes cause events at `revision`
    /// (all of them at that one), and the registry is at `revision` afterwards even when
    /// nothing changed that watchers see.
    public mutating func applying<T>(at revision: Int64, _ body: (inout Registry) throws -> T) rethrows -> T {
        commitRevision = revision
        defer {
            commitRevision = nil
            self.revision = max(self.revision, revision)
        }
        return try body(&self)
    }

    public func instances(of service: String) -> [InstanceResource] {
        (idsByService[service] ?? []).compactMap { instances[$0] }.sorted { $0.id < $1.id }
    }

    private mutating func setInstance(_ instance: InstanceResource) {
        if let old = instances[instance.id], old.service != instance.service { removeInstance(old.id) }
        instances[instance.id] = instance
        idsByService[instance.service, default: []].insert(instance.id)
    }

    @discardableResult
    private mutating func removeInstance(_ id: String) -> InstanceResource? {
        guard let old = instances.removeValue(forKey: id) else { return nil }
        idsByService[old.service]?.remove(id)
        if idsByService[old.service]?.isEmpty == true { idsByService[old.service] = nil }
        return old
    }

    // MARK: internals

    private mutating func record(
        _ kind: RegistryEvent.Kind,
        service: ServiceResource? = nil,
        instance: InstanceResource? = nil,
        policy: AuthorizationPolicy? = nil,
        mesh: MeshSettings? = nil,
        route: HTTPRoute? = nil
    ) -> RegistryEvent {
        if let commitRevision { revision = commitRevision } else { revision += 1 }
        let event = RegistryEvent(
            revision: revision,
            kind: kind,
            service: service,
            instance: instance,
            policy: policy,
            mesh: mesh,
            route: route
        )
        history.append(event)
        if history.count >= historyLimit * 2 {
            let dropped = history.count - historyLimit
            // (A commit's events are dropped together: the floor is a whole revision.)
            var cut = dropped
            while cut < history.count, history[cut].revision == history[dropped - 1].revision { cut += 1 }
            historyFloor = history[cut - 1].revision
            history.removeFirst(cut)
        }
        return event
    }

    private static func nanos(_ seconds: Int) -> UInt64 { UInt64(seconds) * 1_000_000_000 }
}

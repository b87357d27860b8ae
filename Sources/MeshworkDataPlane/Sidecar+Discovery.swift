import Foundation
import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOPosix
import Synchronization

extension Sidecar {
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
        let (backendsChanged, unwatched, unused, dropped) = addRouteBackends(state)
        for name in discovered {
            var cluster = ClusterConfig.discovered(name)
            let subset = subsetBackends[name]
            let service = subset?.service ?? name
            if let service = state.services[service] { cluster.policy = service.policy }
            var addresses: [SocketAddress] = []
            let serving =
                subset.map { backend in
                    state.servingInstances(of: backend.service).filter { backend.selects($0) }
                } ?? state.servingInstances(of: name)
            for instance in serving {
                do {
                    let address = try await AddressResolver.resolve(instance.address, port: instance.port)
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
            if let size = state.services[service]?.policy.subsetSize, let rank, size < cluster.endpoints.count {
                // Backends in the stable order of their ids (servingInstances sorts them).
                cluster.subset = SubsetConfig(size: size, clientIndex: rank, clientCount: peers.count)
            }
            for instance in state.instances.values
            where instance.service == service && !instance.isServing && subset?.selects(instance) ?? true {
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
        applyRoutes(state, rebuild: backendsChanged, &updates)
        removeSubsetClusters(unused)
        removeRouteServices(dropped)
        if !unwatched.isEmpty, let watchMore {
            // Not awaited: watching more replaces the watch this state came from, and must
            // not cancel the application of it (address resolution would fail cancelled).
            logger.info("watching route backends", metadata: ["services": "\(unwatched)"])
            Task { await watchMore(unwatched) }
        }
        guard !flags.discoveryApplied.load(ordering: .relaxed) else { return }
        // The first state: on every loop before a listener accepts, so no request meets
        // the empty clusters of a sidecar that has only just started.
        for update in updates { try? await update.get() }
        flags.discoveryApplied.store(true, ordering: .relaxed)
        openGatedListeners(because: "first discovery state applied")
    }

    /// Clusters for the backends of the routes of the services this sidecar calls: a
    /// subset (`orders~version=v2`) is filled from its service's instances; another service
    /// is to be watched from now on. Returns whether the route backends changed (a cluster
    /// to add or drop), the services to watch, the subset clusters no route names now, and
    /// the services watched only for routes that no route names now.
    private func addRouteBackends(
        _ state: DiscoveryState
    ) -> (changed: Bool, unwatched: [String], unused: [String], dropped: [String]) {
        let parents = Set(discovered.filter { !$0.contains("~") })
        // The services the config (or a reload) names; the others are watched for routes:
        // those reachable from the config's through routes (a route of a route's backend
        // applies too), found to a fixed point so that adding and dropping agree.
        let own = parents.subtracting(routeServices)
        let gateway = config.listeners.isEmpty ? nil : config.service
        let routes = state.routes.values.sorted(by: { $0.name < $1.name })
        func applies(_ route: HTTPRoute, _ services: Set<String>) -> Bool {
            !services.isDisjoint(with: route.parents)
                || gateway.map { name in route.gateways.contains { $0.name == name } } ?? false
        }
        var reachable = own
        var grew = true
        while grew {
            grew = false
            for route in routes where applies(route, reachable) {
                for rule in route.rules {
                    for backend in rule.targets where reachable.insert(backend.service).inserted { grew = true }
                }
            }
        }
        var added: [String] = []
        var services: [String] = []
        var used: Set<String> = []
        for route in routes where applies(route, reachable.intersection(parents)) {
            for rule in route.rules {
                let targets = rule.targets
                for backend in targets where backend.isSubset { used.insert(backend.clusterName) }
                for backend in targets
                where !discovered.contains(backend.clusterName) && !added.contains(backend.clusterName) {
                    if backend.isSubset {
                        subsetBackends[backend.clusterName] = backend
                        if !discovered.contains(backend.service), !services.contains(backend.service) {
                            services.append(backend.service)
                        }
                    } else {
                        services.append(backend.service)
                    }
                    added.append(backend.clusterName)
                }
            }
        }
        // Subsets no route names any more: their clusters go (a map bounded by the routes).
        let unused = subsetBackends.keys.filter { !used.contains($0) }.sorted()
        // Services watched for routes that no route of this sidecar's names now.
        let dropped = routeServices.subtracting(reachable).subtracting(services).sorted()
        guard !added.isEmpty || !unused.isEmpty || !dropped.isEmpty else { return (false, [], [], []) }
        if !added.isEmpty { addDiscoveredClusters(added) }
        let watch = services.filter { !parents.contains($0) }
        routeServices.formUnion(watch)
        return (true, watch, unused, dropped)
    }

    /// Stops following services only routes needed: their clusters go like unused subsets'
    /// (after the route tables that named them were rebuilt), and the watch drops them.
    private func removeRouteServices(_ names: [String]) {
        guard !names.isEmpty else { return }
        for name in names { routeServices.remove(name) }
        logger.info("route services unwatched", metadata: ["services": "\(names)"])
        dropClusters(names)
        if let watchLess {
            Task { await watchLess(names) }
        }
    }

    /// Drops the clusters of subsets no route uses: after the routes that used them were
    /// rebuilt on each loop (the same loop's queue, so in that order); exchanges still on
    /// one keep it until they end, its idle connections close.
    private func removeSubsetClusters(_ names: [String]) {
        guard !names.isEmpty else { return }
        for name in names { subsetBackends[name] = nil }
        logger.info("route backends removed", metadata: ["clusters": "\(names)"])
        dropClusters(names)
    }

    /// Forgets the clusters and drops them from every loop (after what was queued there
    /// before: the rebuilt route tables); exchanges on one keep it until they end.
    private func dropClusters(_ names: [String]) {
        for name in names {
            appliedClusters[name] = nil
            discovered.removeAll { $0 == name }
        }
        let contexts = self.contexts
        for context in contexts.all {
            context.loop.execute {
                for name in names {
                    context.clusters[name]?.retireConnections()
                    context.clusters[name] = nil
                }
            }
        }
    }

    /// Each called service's routes, compiled on every loop against that loop's clusters.
    private func applyRoutes(_ state: DiscoveryState, rebuild: Bool, _ updates: inout [EventLoopFuture<Void>]) {
        let contexts = self.contexts
        for parent in discovered where !parent.contains("~") {
            let routes = state.routes.values.filter { $0.parents.contains(parent) }.sorted { $0.name < $1.name }
            if !rebuild, appliedRoutes[parent] ?? [] == routes { continue }
            appliedRoutes[parent] = routes
            let table = RouteTable(parent: parent, routes: routes)
            logger.info("routes updated", metadata: ["service": "\(parent)", "rules": "\(table.rules.count)"])
            for (index, context) in contexts.all.enumerated() {
                updates.append(
                    context.loop.submit {
                        let loop = contexts.all[index]
                        loop.routes[parent] = table.isEmpty ? nil : LoopRoutes(table: table, clusters: loop.clusters)
                    }
                )
            }
        }
        applyGatewayRoutes(state, rebuild: rebuild, &updates)
    }

    /// A gateway's pushed routes (`kind: Gateway` parents naming its service), compiled
    /// per HTTP and HTTPS listener on every loop.
    private func applyGatewayRoutes(_ state: DiscoveryState, rebuild: Bool, _ updates: inout [EventLoopFuture<Void>]) {
        let gateway = config.service
        let listeners = config.listeners.filter { $0.protocol != .tcp }.map(\.name)
        guard !listeners.isEmpty else { return }
        let routes = state.routes.values.filter { route in route.gateways.contains { $0.name == gateway } }
            .sorted { $0.name < $1.name }
        let key = HTTPRoute.gatewayWatchKey(gateway)
        if !rebuild, appliedRoutes[key] ?? [] == routes { return }
        appliedRoutes[key] = routes
        logger.info("gateway routes updated", metadata: ["gateway": "\(gateway)", "routes": "\(routes.count)"])
        let contexts = self.contexts
        for (index, context) in contexts.all.enumerated() {
            updates.append(
                context.loop.submit {
                    let loop = contexts.all[index]
                    for listener in listeners {
                        loop.gatewayHTTPRoutes[listener] = LoopGatewayRoutes(
                            gateway: gateway,
                            listener: listener,
                            routes: routes,
                            clusters: loop.clusters
                        )
                    }
                }
            )
        }
    }

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
}

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
        for name in discovered {
            var cluster = ClusterConfig.discovered(name)
            if let service = state.services[name] { cluster.policy = service.policy }
            var addresses: [SocketAddress] = []
            for instance in state.servingInstances(of: name) {
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

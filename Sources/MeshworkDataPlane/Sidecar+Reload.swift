import Foundation
import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOPosix
import Synchronization

extension Sidecar {
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
        // A service a listener names now is the config's, even if a route named it first.
        routeServices.subtract(listeners.flatMap(\.services))
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
    func addDiscoveredClusters(_ names: [String]) {
        let loops = contexts.all.count
        for name in names where !discovered.contains(name) {
            discovered.append(name)
            let cluster = ClusterConfig.discovered(name)
            // (A route's subset may come back after it went: its series are the same ones.)
            let metrics =
                clusterMetricsByName[name]
                ?? ClusterMetrics(name: name, endpoints: [], registry: registry, histograms: histograms)
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
}

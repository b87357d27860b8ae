import AsyncHTTPClient
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkIdentity
import MeshworkModel
import NIOCore
import NIOSSL
import ServiceLifecycle

/// The sidecar's link to the controller, as the ServiceLifecycle services that run beside
/// the `Sidecar` in its group, in this order (a group stops them in reverse):
///
/// 1. `WorkloadIdentityAgent` (with a join token): the first certificate, then renewals;
///    the others wait for it.
/// 2. `DiscoveryWatch`: the cache at start, then the watch applied to the sidecar.
/// 3. `TelemetryReporter` (with an inbound): what the sidecar carried, per edge.
/// 4. `RegistrationAgent` (with an inbound): registration, health and heartbeats; it
///    stops first, deregistering before the sidecar drains.
///
/// They share one `HTTPControllerClient`, whose trust and credential the identity updates.
public struct DiscoveryAgent: Sendable {
    public let services: [any Service]
    let watcher: DiscoveryWatch

    /// Builds the services of `sidecar` (started: its bound ports name the instance).
    public static func make(
        config: SidecarConfig,
        sidecar: Sidecar,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> DiscoveryAgent {
        guard let controller = config.controller else {
            throw ControllerClientError("no controller configured")
        }
        var roots: [NIOSSLCertificate]?
        if controller.url.hasPrefix("https://"), let caFile = controller.caFile {
            guard let certificates = try? NIOSSLCertificate.fromPEMFile(caFile), !certificates.isEmpty else {
                throw ControllerClientError("cannot read controller.caFile \(caFile)")
            }
            roots = certificates
        }
        var token: String?
        if let file = controller.tokenFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ControllerClientError("cannot read controller.tokenFile \(file)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let link = HTTPControllerClient(baseURL: controller.url, token: token, roots: roots, group: group)
        return await assemble(config: config, sidecar: sidecar, group: group, logger: logger, client: link, http: link)
    }

    /// The services over `client`; the workload identity needs the HTTP one (`http`: its
    /// trust and credential change with the identity).
    static func assemble(
        config: SidecarConfig,
        sidecar: Sidecar,
        group: any EventLoopGroup,
        logger: Logger,
        client link: any ControllerClient,
        http httpLink: HTTPControllerClient?
    ) async -> DiscoveryAgent {
        let controller = config.controller ?? MeshworkModel.ControllerLink(url: "")
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(25))
        let http = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        // The instance id first: the first state applied already places this sidecar in
        // its subsets.
        let instance = await makeInstance(config: config, sidecar: sidecar)
        if let instance { await sidecar.setInstanceID(instance.id) }

        let ready = Latch(open: !controller.usesWorkloadIdentity)
        var services: [any Service] = []
        var identity: WorkloadIdentityAgent?
        if controller.usesWorkloadIdentity, let httpLink {
            let agent = WorkloadIdentityAgent(
                config: config,
                sidecar: sidecar,
                link: httpLink,
                instanceID: instance?.id,
                ready: ready,
                logger: logger
            )
            identity = agent
            services.append(agent)
        }
        let watcher = DiscoveryWatch(
            config: config,
            sidecar: sidecar,
            link: link,
            identityReady: ready,
            identity: identity,
            logger: logger
        )
        services.append(watcher)
        if let instance {
            services.append(
                TelemetryReporter(
                    config: config,
                    sidecar: sidecar,
                    link: link,
                    instanceID: instance.id,
                    identityReady: ready,
                    logger: logger
                )
            )
            services.append(
                RegistrationAgent(
                    config: config,
                    instance: instance,
                    link: link,
                    http: http,
                    group: group,
                    identityReady: ready,
                    logger: logger
                )
            )
        }
        services.append(Closer(link: httpLink, http: http))
        // The closer stops last (first in the group's order): it shuts the clients down.
        services.insert(services.removeLast(), at: 0)
        return DiscoveryAgent(services: services, watcher: watcher)
    }

    /// Watches `services` as well from now on (a gateway reload routing to a new one).
    public func watch(additional services: [String]) async {
        await watcher.watch(additional: services)
    }

    /// Stops watching services added with `watch(additional:)` (a route's that went).
    public func unwatch(_ services: [String]) async {
        await watcher.unwatch(services)
    }

    /// This sidecar's registration record; nil without an inbound (a gateway, a client).
    static func makeInstance(config: SidecarConfig, sidecar: Sidecar) async -> InstanceResource? {
        guard let inbound = config.inbound else { return nil }
        let bound = await sidecar.boundAddresses
        let port = bound["inbound"]?.port ?? inbound.listen.port
        let address = config.instance.address ?? inbound.listen.host
        let id = config.instance.id ?? InstanceResource.defaultID(service: config.service, address: address, port: port)
        var instance = InstanceResource(id: id, service: config.service, address: address, port: port)
        instance.zone = config.instance.zone ?? config.zone
        instance.weight = config.instance.weight
        instance.version = config.instance.version
        instance.metadata = config.instance.metadata
        // Where the controller reaches this sidecar's admin listener (taps).
        if let admin = bound["admin"], let adminPort = admin.port, let ip = admin.ipAddress {
            let host = ip == "0.0.0.0" || ip == "::" ? address : ip
            instance.metadata[InstanceResource.adminMetadataKey] =
                host.contains(":") ? "[\(host)]:\(adminPort)" : "\(host):\(adminPort)"
        }
        instance.ttlSeconds = max(1, Int(config.instance.ttl.nanoseconds / 1_000_000_000))
        return instance
    }

    /// Shuts the agent's HTTP clients down once every other service has stopped.
    private struct Closer: Service {
        let link: HTTPControllerClient?
        let http: HTTPClient

        func run() async throws {
            try? await gracefulShutdown()
            await link?.shutdown()
            try? await http.shutdown()
        }
    }
}

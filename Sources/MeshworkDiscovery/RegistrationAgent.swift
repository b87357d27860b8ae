import AsyncHTTPClient
import Logging
import MeshworkDataPlane
import MeshworkModel
import NIOCore
import ServiceLifecycle

/// Registration and health, one of the discovery agent's services: registers this instance
/// (`starting` until the app's health check passes), heartbeats at a third of the TTL with
/// the current health, registers again when the controller has forgotten it, and
/// deregisters on shutdown. It is the last service of its sidecar's group, so it stops
/// first: callers stop picking the instance before the sidecar drains.
actor RegistrationAgent: Service {
    let config: SidecarConfig
    let link: any ControllerClient
    /// For the app's health checks.
    let http: HTTPClient
    let group: any EventLoopGroup
    let logger: Logger
    let identityReady: Latch
    private(set) var instance: InstanceResource
    private var health: HealthState
    private var registered = false
    /// Whether a registration was attempted (it may have landed though its answer did not).
    private var attempted = false

    init(
        config: SidecarConfig,
        instance: InstanceResource,
        link: any ControllerClient,
        http: HTTPClient,
        group: any EventLoopGroup,
        identityReady: Latch,
        logger: Logger
    ) {
        self.config = config
        self.instance = instance
        self.link = link
        self.http = http
        self.group = group
        self.identityReady = identityReady
        self.logger = logger
        self.health = HealthState(
            healthyThreshold: config.healthCheck.healthyThreshold,
            unhealthyThreshold: config.healthCheck.unhealthyThreshold
        )
        self.instance.health = health.health
    }

    func run() async throws {
        try await runUntilShutdown {
            try await self.identityReady.wait()
            try await self.registrationLoop()
        }
        await deregister()
    }

    private func registrationLoop() async throws {
        guard let inbound = config.inbound else { return }
        let checker = HealthChecker(config: config.healthCheck, app: inbound.app, http: http, group: group)
        let heartbeatEvery = Duration.nanoseconds(config.instance.ttl.nanoseconds / 3)
        var nextHeartbeat = ContinuousClock.now
        while true {
            try Task.checkCancellation()
            if let changed = health.record(await checker.check()) {
                logger.info("app health changed", metadata: ["health": "\(changed.rawValue)"])
                instance.health = changed
                nextHeartbeat = .now
            }
            if ContinuousClock.now >= nextHeartbeat {
                do {
                    if !registered {
                        attempted = true
                        try await link.register(instance)
                        registered = true
                        logger.info("registered", metadata: ["instance": "\(instance.id)"])
                    } else if try await !link.heartbeat(instance.id, health: instance.health) {
                        registered = false
                        logger.warning("the controller forgot this instance; registering again")
                        continue
                    }
                    nextHeartbeat = .now + heartbeatEvery
                } catch {
                    try Task.checkCancellation()
                    logger.warning("controller unreachable for registration", metadata: ["error": "\(error)"])
                    nextHeartbeat = .now + .seconds(1)
                }
            }
            try await Task.sleep(for: .nanoseconds(config.healthCheck.interval.nanoseconds))
        }
    }

    private func deregister() async {
        guard attempted else { return }
        do {
            try await link.deregister(instance.id)
            registered = false
            logger.info("deregistered", metadata: ["instance": "\(instance.id)"])
        } catch {
            logger.warning("could not deregister (the lease will expire)", metadata: ["error": "\(error)"])
        }
    }
}

import Logging
import MeshworkDataPlane
import MeshworkModel
import ServiceLifecycle

/// Telemetry reports, one of the discovery agent's services: every `telemetryInterval`,
/// what the sidecar carried per edge goes to the controller. A report that cannot be
/// delivered is dropped (the sidecar's /metrics keeps the totals).
actor TelemetryReporter: Service {
    let config: SidecarConfig
    let sidecar: Sidecar
    let link: any ControllerClient
    let instanceID: String
    let identityReady: Latch
    let logger: Logger

    init(
        config: SidecarConfig,
        sidecar: Sidecar,
        link: any ControllerClient,
        instanceID: String,
        identityReady: Latch,
        logger: Logger
    ) {
        self.config = config
        self.sidecar = sidecar
        self.link = link
        self.instanceID = instanceID
        self.identityReady = identityReady
        self.logger = logger
    }

    func run() async throws {
        try await runUntilShutdown {
            try await self.identityReady.wait()
            try await self.reportLoop()
        }
    }

    private func reportLoop() async throws {
        let interval = Duration.nanoseconds(config.controller?.telemetryInterval.nanoseconds ?? 5_000_000_000)
        var last = ContinuousClock.now
        while true {
            try await Task.sleep(for: interval)
            let now = ContinuousClock.now
            let elapsed = now - last
            last = now
            let report = sidecar.edges.takeTelemetryReport(
                service: config.service,
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            )
            guard !report.edges.isEmpty else { continue }
            do {
                try await link.report(report, instance: instanceID)
            } catch {
                try Task.checkCancellation()
                logger.debug("telemetry report not delivered", metadata: ["error": "\(error)"])
            }
        }
    }
}

import ArgumentParser
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkDiscovery
import MeshworkModel
import NIOCore
import ServiceLifecycle
import UnixSignals

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the edge gateway: fixed public listeners routed to mesh services.",
        discussion: """
            The config is a sidecar config (docs/configuration.md) whose `listeners` are the public \
            ports: HTTP and HTTPS (the operator's certificates, chosen by SNI) routed by host, path \
            prefix and headers, or TCP to one service; with a controller, HTTPRoutes whose parent is the \
            gateway (kind: Gateway, docs/routes.md) are matched first. With a controller section the gateway joins the \
            mesh (joinTokenFile: its own identity, mTLS to every instance) and discovers the services \
            its routes name. SIGHUP reloads routes and certificates without dropping a connection. \
            SIGTERM or SIGINT drains gracefully.
            """
    )

    @Option(name: .long, help: "Path of the gateway's YAML config.")
    var config: String

    @Option(name: .long, help: "Event loop threads (overrides the config; 0 = one per core).")
    var threads: Int?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Flag(name: .long, help: "Only check the config and exit (0 if valid).")
    var check = false

    static func load(_ path: String) throws -> SidecarConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw CommandFailure("cannot read config file \(path): \(error.localizedDescription)")
        }
        var loaded: SidecarConfig
        do {
            loaded = try SidecarConfig.load(yaml: text)
        } catch {
            throw CommandFailure("\(path): \(error)")
        }
        guard !loaded.listeners.isEmpty else {
            throw CommandFailure("\(path): listeners: a gateway needs at least one listener")
        }
        guard loaded.inbound == nil else {
            throw CommandFailure("\(path): inbound: a gateway has no app behind it (use meshwork sidecar)")
        }
        // Its identity in the mesh: spiffe://<trust-domain>/service/<service>.
        if loaded.service == SidecarConfig().service { loaded.service = "gateway" }
        return loaded
    }

    func run() async throws {
        var gatewayConfig = try Self.load(config)
        if let threads {
            guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
            gatewayConfig.threads = threads
        }
        if check {
            do {
                try Sidecar.checkFiles(gatewayConfig)
            } catch {
                throw CommandFailure("\(config): \(error)")
            }
            print("\(config): valid")
            return
        }
        let runtime = try await SidecarRuntime.start(
            gatewayConfig,
            source: config,
            logLevel: logLevel,
            label: "meshwork.gateway"
        )
        let reloader = GatewayReloader(
            path: config,
            sidecar: runtime.sidecar,
            agent: runtime.agent,
            logger: runtime.logger
        )
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: runtime.services + [.init(service: reloader)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: runtime.logger
            )
        )
        try await serviceGroup.run()
        try await runtime.group.shutdownGracefully()
    }
}

/// Reloads the gateway's listeners on SIGHUP: a bad file is refused (logged with the field
/// and why) and the running routes stay as they were.
struct GatewayReloader: Service {
    let path: String
    let sidecar: Sidecar
    let agent: DiscoveryAgent?
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in signals.cancelOnGracefulShutdown() {
                await reload()
            }
        } onGracefulShutdown: {
        }
    }

    func reload() async {
        do {
            let config = try GatewayCommand.load(path)
            let added = try await sidecar.reload(listeners: config.listeners)
            if !added.isEmpty { await agent?.watch(additional: added) }
        } catch {
            logger.error("reload refused; the running config stays", metadata: ["error": "\(error)"])
        }
    }
}

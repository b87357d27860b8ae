import ArgumentParser
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkModel
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

struct SidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sidecar",
        abstract: "Run the sidecar proxy beside one service instance.",
        discussion: "The config file is YAML; see docs/configuration.md. SIGTERM or SIGINT drains gracefully."
    )

    @Option(name: .long, help: "Path of the sidecar's YAML config.")
    var config: String

    @Option(name: .long, help: "Event loop threads (overrides the config; 0 = one per core).")
    var threads: Int?

    @Flag(name: .long, help: "Only check the config and exit (0 if valid).")
    var check = false

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let text: String
        do {
            text = try String(contentsOfFile: config, encoding: .utf8)
        } catch {
            throw CommandFailure("cannot read config file \(config): \(error.localizedDescription)")
        }
        var sidecarConfig: SidecarConfig
        do {
            sidecarConfig = try SidecarConfig.load(yaml: text)
        } catch {
            throw CommandFailure("\(config): \(error)")
        }
        if let threads {
            guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
            sidecarConfig.threads = threads
        }
        if check {
            print("\(config): valid")
            return
        }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "meshwork.sidecar")
        let threadCount = sidecarConfig.threads == 0 ? System.coreCount : sidecarConfig.threads
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threadCount)
        let registry = PrometheusCollectorRegistry()
        let sidecar: Sidecar
        do {
            sidecar = try Sidecar(config: sidecarConfig, group: group, registry: registry, logger: logger)
        } catch {
            throw CommandFailure("\(config): \(error)")
        }
        try await sidecar.start()
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [.init(service: sidecar)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await serviceGroup.run()
        try await group.shutdownGracefully()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

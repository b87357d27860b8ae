import ArgumentParser
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkDiscovery
import MeshworkModel
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

/// `meshwork run ... -- ./my-app args`: the sidecar and its app as one unit. The app starts
/// only once the sidecar is ready (`/ready`: listening, first discovery state applied,
/// identity installed); the instance takes traffic once the app's health check
/// passes; when the app exits the sidecar deregisters and stops, and `run` exits with the
/// app's code; SIGTERM/SIGINT deregister, drain, then stop the app.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run an app with its sidecar: start in order, stop together, exit with the app's code.",
        discussion: """
            meshwork run --service orders --app-port 8080 --controller https://127.0.0.1:7070 \
            --join-token-file orders.token -- ./orders --port 8080
            The app gets MESHWORK_UPSTREAM_<NAME>=host:port for each upstream port, HTTP_PROXY when \
            --http-proxy is set, and MESHWORK_ADMIN=host:port.
            """
    )

    @OptionGroup var flags: SidecarFlags

    @Argument(parsing: .postTerminator, help: "The app's command and arguments (after --).")
    var command: [String] = []

    func run() async throws {
        guard let executable = command.first else { throw CommandFailure("give the app's command after --") }
        let sidecarConfig = try flags.effectiveConfig()
        let (sidecar, services, group, logger) = try await flags.startSidecar(sidecarConfig, label: "meshwork.run")
        let serviceGroup = ServiceGroup(configuration: .init(services: services, logger: logger))

        let app = Process()
        app.executableURL = URL(fileURLWithPath: Self.resolve(executable))
        app.arguments = Array(command.dropFirst())
        app.environment = await Self.environment(for: sidecar, sidecarConfig)
        let (exits, exitContinuation) = AsyncStream<Void>.makeStream()
        app.terminationHandler = { _ in
            exitContinuation.yield()
            exitContinuation.finish()
        }

        try await withThrowingTaskGroup(of: Bool.self) { tasks in
            tasks.addTask {
                try await serviceGroup.run()
                return true
            }
            // The sidecar can route (listeners, first discovery state, identity): now the
            // app, whose first call then finds its services. Bounded: a sidecar that cannot
            // get ready (the controller down, no cache) still starts its app, and says why.
            let wait = (sidecarConfig.controller?.startupWait.duration ?? .zero) + .seconds(30)
            let readyBy = ContinuousClock.now + wait
            while !sidecar.isReady, ContinuousClock.now < readyBy {
                try await Task.sleep(for: .milliseconds(5))
            }
            if !sidecar.isReady {
                logger.warning(
                    "starting the app before the sidecar is ready",
                    metadata: ["readiness": "\(sidecar.readiness)", "waited": "\(wait)"]
                )
            }
            do {
                try app.run()
            } catch {
                await serviceGroup.triggerGracefulShutdown()
                throw CommandFailure("cannot start \(executable): \(error.localizedDescription)")
            }
            logger.info("app started", metadata: ["pid": "\(app.processIdentifier)", "command": "\(executable)"])
            tasks.addTask {
                // A signal: deregister and drain first (the group), the app is stopped after.
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                    logger.info("signal: deregistering and draining, then stopping the app")
                    await serviceGroup.triggerGracefulShutdown()
                    break
                }
                return false
            }
            tasks.addTask {
                for await _ in exits {}
                logger.info("app exited; stopping the sidecar")
                await serviceGroup.triggerGracefulShutdown()
                return false
            }
            // The group ends after a graceful shutdown, whichever way it was asked for;
            // the other tasks are only cancelled then (cancelling the group would cut the
            // deregistration short).
            while let groupEnded = try await tasks.next() {
                if groupEnded { break }
            }
            tasks.cancelAll()
        }
        if app.isRunning {
            app.terminate()
            for _ in 0..<1000 where app.isRunning { try await Task.sleep(for: .milliseconds(10)) }
            if app.isRunning { kill(app.processIdentifier, SIGKILL) }
        }
        if app.processIdentifier > 0 { app.waitUntilExit() }
        try await group.shutdownGracefully()
        guard app.processIdentifier > 0 else { throw ExitCode(1) }
        let code =
            app.terminationReason == .uncaughtSignal ? 128 + app.terminationStatus : app.terminationStatus
        throw ExitCode(code)
    }

    /// The app's environment: the sidecar's ports as MESHWORK_UPSTREAM_<NAME>, HTTP_PROXY
    /// and MESHWORK_ADMIN.
    static func environment(for sidecar: Sidecar, _ sidecarConfig: SidecarConfig) async -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        let bound = await sidecar.boundAddresses
        for upstream in sidecarConfig.upstreams {
            if let address = bound["upstream:\(upstream.cluster)"], let port = address.port {
                let name = upstream.cluster.uppercased().replacingOccurrences(of: "-", with: "_")
                environment["MESHWORK_UPSTREAM_\(name)"] = "\(upstream.listen.host):\(port)"
            }
        }
        if let proxy = bound["http_proxy"], let port = proxy.port, let host = sidecarConfig.httpProxy?.listen.host {
            environment["HTTP_PROXY"] = "http://\(host):\(port)"
        }
        if let admin = bound["admin"], let port = admin.port, let host = sidecarConfig.admin?.host {
            environment["MESHWORK_ADMIN"] = "\(host):\(port)"
        }
        return environment
    }

    /// `name` as is when it has a slash, else the first match on PATH.
    static func resolve(_ name: String) -> String {
        guard !name.contains("/") else { return name }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return name
    }
}

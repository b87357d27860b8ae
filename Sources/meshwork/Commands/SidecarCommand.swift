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

struct SidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sidecar",
        abstract: "Run the sidecar proxy beside one service instance.",
        discussion: """
            Configure it with a YAML file (see docs/configuration.md), with flags, or both (flags win). \
            With --controller it registers the instance, health-checks the app and learns the instances \
            of every --upstream from the controller:
              meshwork sidecar --service orders --app-port 8080 --controller https://127.0.0.1:7070 \
            --join-token-file orders.token --upstream inventory=127.0.0.1:9001
            (a join token carries the controller CA's pin; with --token-file instead, verify the \
            controller with --controller-ca <data-dir>/ca.pem)
            SIGTERM or SIGINT deregisters, then drains gracefully.
            """
    )

    @OptionGroup var flags: SidecarFlags

    @Flag(name: .long, help: "Only check the config and exit (0 if valid).")
    var check = false

    func run() async throws {
        let sidecarConfig = try flags.effectiveConfig()
        if check {
            do {
                try Sidecar.checkFiles(sidecarConfig)
            } catch {
                throw CommandFailure("\(flags.config ?? "flags"): \(error)")
            }
            print("\(flags.config ?? "flags"): valid")
            return
        }
        let (_, services, group, logger) = try await flags.startSidecar(sidecarConfig, label: "meshwork.sidecar")
        let serviceGroup = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await serviceGroup.run()
        try await group.shutdownGracefully()
    }
}

/// The sidecar's options, shared by `meshwork sidecar` and `meshwork run`.
struct SidecarFlags: ParsableArguments {
    @Option(name: .long, help: "Path of the sidecar's YAML config.")
    var config: String?

    @Option(name: .long, help: "This instance's service name.")
    var service: String?

    @Option(name: .long, help: "The local app's port on 127.0.0.1 (inbound traffic goes there).")
    var appPort: Int?

    @Option(name: .long, help: "How the app is spoken to: http1, h2c or tcp.")
    var appProtocol: AppProtocol?

    @Option(name: .long, help: "Inbound listener (peer sidecars connect here; port 0 picks one).")
    var inbound: String?

    @Option(
        name: .long,
        help: "The controller's API URL; several, comma-separated (controllers on one etcd), fail over in turn."
    )
    var controller: String?

    @Option(name: .long, help: "File holding the controller API token.")
    var tokenFile: String?

    @Option(
        name: .long,
        help: "Where to keep the last known registry state (serves from it when the controller is down)."
    )
    var cacheFile: String?

    @Option(
        name: .long,
        help:
            "File with a join token (meshwork ctl token create): get a workload certificate from the controller; every mesh hop is then mTLS."
    )
    var joinTokenFile: String?

    @Option(
        name: .long,
        help:
            "How long traffic listeners wait for the first discovery state before accepting anyway (default 5s)."
    )
    var startupWait: String?

    @Option(name: .long, help: "Do not start from a discovery cache older than this (default: any age).")
    var maxStaleness: String?

    @Option(name: .long, help: "PEM roots that verify an https:// controller (its <data-dir>/ca.pem).")
    var controllerCA: String?

    @Option(name: .long, help: "Requested workload certificate lifetime (the controller caps it), e.g. 1h.")
    var certTTL: String?

    @Option(name: .long, help: "How often per-edge telemetry goes to the controller, e.g. 5s.")
    var telemetryInterval: String?

    @Option(name: .long, help: "OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces (turns tracing on).")
    var traceEndpoint: String?

    @Option(name: .long, help: "Share of requests without a trace context that start a sampled trace (0...1).")
    var traceSampleRate: Double?

    @Option(name: .long, help: "Access log: stdout, or a file appended to (one JSON line per request).")
    var accessLog: String?

    @Option(
        name: .long,
        help:
            "A service this one calls, learnt from the controller; NAME=ADDRESS also opens a local port for it. Repeatable."
    )
    var upstream: [String] = []

    @Option(name: .long, help: "HTTP_PROXY listener: apps call http://<service>/ through it.")
    var httpProxy: String?

    @Option(name: .long, help: "Admin listener (/metrics, /ready, /live, /config, /tap).")
    var admin: String?

    @Option(
        name: .long,
        help:
            "File with the token for the admin /config and /tap (created 0600 if missing; default: none, only the controller)."
    )
    var adminTokenFile: String?

    @Option(name: .long, help: "This instance's zone.")
    var zone: String?

    @Option(name: .long, help: "This instance's version (what a route's backend subset selects, e.g. v2).")
    var version: String?

    @Option(name: .long, help: "Health check: an HTTP path on the app (default: a TCP connect).")
    var healthPath: String?

    @Option(name: .long, help: "How often the app is health-checked, e.g. 2s.")
    var healthInterval: String?

    @Option(name: .long, help: "Lease TTL, e.g. 15s: without heartbeats the controller drops the instance after it.")
    var ttl: String?

    @Option(name: .long, help: "Event loop threads (overrides the config; 0 = one per core).")
    var threads: Int?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    /// The config from the file (if any) with the flags applied on top.
    func effectiveConfig() throws -> SidecarConfig {
        var sidecarConfig = SidecarConfig()
        let source = config ?? "flags"
        if let config {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw CommandFailure("cannot read config file \(config): \(error.localizedDescription)")
            }
            do {
                sidecarConfig = try SidecarConfig.load(yaml: text)
            } catch {
                throw CommandFailure("\(config): \(error)")
            }
        } else {
            // Flags only: listeners on free ports unless told otherwise.
            sidecarConfig.admin = HostPort(host: "127.0.0.1", port: 0)
        }
        func address(_ text: String, _ flag: String) throws -> HostPort {
            switch HostPort.parse(text) {
            case .success(let value): return value
            case .failure(let error): throw CommandFailure("--\(flag): \(error.reason)")
            }
        }
        if let service { sidecarConfig.service = service }
        if let zone { sidecarConfig.zone = zone }
        if let version { sidecarConfig.instance.version = version }
        if let admin { sidecarConfig.admin = try address(admin, "admin") }
        if let adminTokenFile { sidecarConfig.adminTokenFile = adminTokenFile }
        if let appPort {
            guard (1...65535).contains(appPort) else { throw CommandFailure("--app-port: must be between 1 and 65535") }
            let listen = try inbound.map { try address($0, "inbound") } ?? HostPort(host: "127.0.0.1", port: 0)
            var inboundConfig =
                sidecarConfig.inbound ?? InboundConfig(listen: listen, app: HostPort(host: "127.0.0.1", port: appPort))
            inboundConfig.app = HostPort(host: "127.0.0.1", port: appPort)
            inboundConfig.listen = listen
            if let appProtocol { inboundConfig.protocol = appProtocol }
            sidecarConfig.inbound = inboundConfig
        } else if inbound != nil {
            throw CommandFailure("--inbound needs --app-port")
        }
        if let controller {
            let urls: [String]
            switch ControllerLink.urls(controller) {
            case .success(let split): urls = split
            case .failure(let error): throw CommandFailure("--controller: \(error.reason)")
            }
            var link = sidecarConfig.controller ?? ControllerLink(url: controller)
            link.url = urls.joined(separator: ",")
            sidecarConfig.controller = link
        }
        if let tokenFile { sidecarConfig.controller?.tokenFile = tokenFile }
        if let cacheFile { sidecarConfig.controller?.cacheFile = cacheFile }
        if let joinTokenFile { sidecarConfig.controller?.joinTokenFile = joinTokenFile }
        if let controllerCA { sidecarConfig.controller?.caFile = controllerCA }
        if let startupWait {
            guard let value = DurationText.parse(startupWait), value <= .seconds(600) else {
                throw CommandFailure("--startup-wait: expected a duration of at most 10m, like 5s")
            }
            sidecarConfig.controller?.startupWait = TimeSpan(value)
        }
        if let maxStaleness {
            guard let value = DurationText.parse(maxStaleness) else {
                throw CommandFailure("--max-staleness: expected a duration, like 10m")
            }
            sidecarConfig.controller?.maxStaleness = TimeSpan(value)
        }
        if let certTTL {
            guard let value = DurationText.parse(certTTL), value >= .seconds(3) else {
                throw CommandFailure("--cert-ttl: expected a duration of at least 3s, like 1h")
            }
            sidecarConfig.controller?.certificateTTL = TimeSpan(value)
        }
        if let telemetryInterval {
            guard let value = DurationText.parse(telemetryInterval), value >= .milliseconds(100),
                value <= .seconds(60)
            else {
                throw CommandFailure("--telemetry-interval: expected a duration between 100ms and 60s, like 5s")
            }
            sidecarConfig.controller?.telemetryInterval = TimeSpan(value)
        }
        if let traceEndpoint {
            guard traceEndpoint.hasPrefix("http://") || traceEndpoint.hasPrefix("https://") else {
                throw CommandFailure("--trace-endpoint: expected an http:// or https:// OTLP/HTTP URL")
            }
            sidecarConfig.tracing.endpoint = traceEndpoint
        }
        if let traceSampleRate {
            guard (0...1).contains(traceSampleRate) else {
                throw CommandFailure("--trace-sample-rate: expected a number between 0 and 1")
            }
            sidecarConfig.tracing.sampleRate = traceSampleRate
        }
        if let accessLog { sidecarConfig.accessLog = AccessLogTarget(accessLog) }
        if let healthPath {
            sidecarConfig.healthCheck.kind = .http
            sidecarConfig.healthCheck.path = healthPath
        }
        if let healthInterval {
            guard let value = DurationText.parse(healthInterval), value > .zero else {
                throw CommandFailure("--health-interval: expected a duration like 2s")
            }
            sidecarConfig.healthCheck.interval = TimeSpan(value)
        }
        if let ttl {
            guard let value = DurationText.parse(ttl), value >= .seconds(1) else {
                throw CommandFailure("--ttl: expected a duration of at least 1s, like 15s")
            }
            sidecarConfig.instance.ttl = TimeSpan(value)
        }
        for entry in upstream {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts[0]
            if let reason = Names.invalidServiceName(name) { throw CommandFailure("--upstream \(entry): \(reason)") }
            if !sidecarConfig.discover.contains(name) { sidecarConfig.discover.append(name) }
            if parts.count == 2 {
                sidecarConfig.upstreams.append(UpstreamConfig(listen: try address(parts[1], "upstream"), cluster: name))
            }
        }
        if let httpProxy { sidecarConfig.httpProxy = HTTPProxyConfig(listen: try address(httpProxy, "http-proxy")) }
        if let threads {
            guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
            sidecarConfig.threads = threads
        }
        if !sidecarConfig.discover.isEmpty || sidecarConfig.inbound != nil, config == nil,
            sidecarConfig.controller == nil,
            !upstream.isEmpty
        {
            throw CommandFailure("--upstream needs --controller")
        }
        if sidecarConfig.controller != nil, sidecarConfig.service == "app", service == nil {
            throw CommandFailure("\(source): --service (or service:) names this instance's service for the controller")
        }
        return sidecarConfig
    }

}

extension SidecarFlags {
    /// Bootstraps logging, builds the sidecar on its event loops and starts its listeners;
    /// returns it with the services to run (the sidecar, then the discovery agent when a
    /// controller is configured: a ServiceGroup stops them in reverse order, so the agent
    /// deregisters before the sidecar drains).
    func startSidecar(
        _ sidecarConfig: SidecarConfig,
        label: String
    ) async throws -> (Sidecar, [ServiceGroupConfiguration.ServiceConfiguration], MultiThreadedEventLoopGroup, Logger) {
        let started = try await SidecarRuntime.start(
            sidecarConfig,
            source: config ?? "flags",
            logLevel: logLevel,
            label: label
        )
        return (started.sidecar, started.services, started.group, started.logger)
    }
}

/// A sidecar (or gateway) built and started, with the services that run it.
struct SidecarRuntime {
    var sidecar: Sidecar
    var agent: DiscoveryAgent?
    var services: [ServiceGroupConfiguration.ServiceConfiguration]
    var group: MultiThreadedEventLoopGroup
    var logger: Logger

    /// Bootstraps logging, builds the sidecar on its event loops and starts its listeners;
    /// the services are the sidecar, then the discovery agent when a controller is
    /// configured (a ServiceGroup stops them in reverse order, so the agent deregisters
    /// before the sidecar drains).
    static func start(
        _ sidecarConfig: SidecarConfig,
        source: String,
        logLevel: Logger.Level,
        label: String
    ) async throws -> SidecarRuntime {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: label)
        let threadCount = sidecarConfig.threads == 0 ? System.coreCount : sidecarConfig.threads
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threadCount)
        let sidecar: Sidecar
        let registry = PrometheusCollectorRegistry()
        do {
            sidecar = try Sidecar(
                config: sidecarConfig,
                group: group,
                registry: registry,
                logger: logger
            )
        } catch {
            throw CommandFailure("\(source): \(error)")
        }
        try await sidecar.start()
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: sidecar)]
        if let spans = sidecar.spans {
            // First in the group, so it stops last: spans of the drain's requests go out too.
            let exporter = TraceExporter(
                config: sidecarConfig,
                spans: spans,
                instance: sidecarConfig.instance.id,
                group: group,
                registry: registry,
                logger: logger
            )
            services.insert(.init(service: exporter), at: 0)
        }
        var agent: DiscoveryAgent?
        if sidecarConfig.controller != nil {
            do {
                let discovery = try await DiscoveryAgent.make(
                    config: sidecarConfig,
                    sidecar: sidecar,
                    group: group,
                    logger: logger
                )
                agent = discovery
                // A route may send to services the config does not name: watch them too.
                await sidecar.setWatchMore { names in await discovery.watch(additional: names) }
                await sidecar.setWatchLess { names in await discovery.unwatch(names) }
                services += discovery.services.map { .init(service: $0) }
            } catch {
                throw CommandFailure("\(error)")
            }
        }
        return SidecarRuntime(sidecar: sidecar, agent: agent, services: services, group: group, logger: logger)
    }
}

extension AppProtocol: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

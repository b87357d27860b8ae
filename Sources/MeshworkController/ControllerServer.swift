import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import MeshworkDNS
import MeshworkModel
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// `meshwork controller`: the registry with its store, leases and watch streams, served
/// over HTTP. A ServiceLifecycle service: on SIGTERM it stops accepting and ends watches.
public final class ControllerServer: Service {
    public struct Options: Sendable {
        public var dataDirectory: String
        public var listen: HostPort
        public var token: String
        /// The SPIFFE trust domain of the mesh's identities.
        public var trustDomain = "mesh.local"
        /// An operator-supplied CA (PEM texts: the signing certificate then its issuers up
        /// to the root, and its key); nil: the CA in the store, created on first start.
        public var authority: (certificates: String, key: String)?
        /// Serve the API over TLS with a certificate from the mesh CA; the trust bundle is
        /// written to `<data-dir>/ca.pem` for local clients.
        public var tls = false
        /// Reads need a token as well (for APIs reachable beyond a trusted network).
        public var protectReads = false
        /// The longest workload certificate lifetime (and the default).
        public var certificateLifetime: Duration = .seconds(86_400)
        /// Where the DNS server listens (UDP and TCP); nil: no DNS server.
        public var dns: HostPort? = HostPort(host: "127.0.0.1", port: 8600)
        /// The DNS domain (`orders.service.<domain>.`) and the TTL of its answers.
        public var dnsZone = DNSZone.Options()
        /// Where everything is kept: the SQLite file in the data directory (one controller),
        /// or an etcd cluster that several controllers share.
        public var store: StoreOption = .sqlite
        /// This controller's name in the leader election and the logs.
        public var name = ProcessInfo.processInfo.hostName
        /// The leader's lease: a leader that stops renewing it is replaced within about
        /// this long (and within twice it at the latest).
        public var electionTTL: Duration = .seconds(5)
        /// The API URL other controllers reach this one at (telemetry is relayed to the
        /// leader's); default: the listen address with the port it got, unless that is a
        /// wildcard (then followers keep the reports they receive).
        public var advertiseURL: String?

        public init(dataDirectory: String, listen: HostPort, token: String) {
            self.dataDirectory = dataDirectory
            self.listen = listen
            self.token = token
        }
    }

    /// Where the controller keeps its state.
    public enum StoreOption: Sendable, Hashable {
        case sqlite
        case etcd(EtcdOptions)
    }

    /// How to reach etcd: `--store etcd://host:port,host:port` (or `etcds://` for TLS).
    public struct EtcdOptions: Sendable, Hashable {
        public var endpoints: [String]
        /// Every key is under it (several meshes may share one cluster).
        public var prefix = "/meshwork"
        public var caFile: String?
        public var certificateFile: String?
        public var keyFile: String?

        public init(endpoints: [String]) { self.endpoints = endpoints }

        /// `etcd://a:2379,b:2379` or `etcds://...`; the endpoints as URLs, or why not.
        public static func parse(_ text: String) -> Result<EtcdOptions, ControllerError> {
            let scheme: String
            let rest: Substring
            if text.hasPrefix("etcd://") {
                (scheme, rest) = ("http", text.dropFirst("etcd://".count))
            } else if text.hasPrefix("etcds://") {
                (scheme, rest) = ("https", text.dropFirst("etcds://".count))
            } else {
                return .failure(
                    ControllerError("expected etcd://host:port[,host:port...] or etcds://..., got \"\(text)\"")
                )
            }
            var endpoints: [String] = []
            for member in rest.split(separator: ",", omittingEmptySubsequences: false) {
                guard case .success(let address) = HostPort.parse(String(member)) else {
                    return .failure(ControllerError("\"\(member)\" is not host:port"))
                }
                let host = address.host.contains(":") ? "[\(address.host)]" : address.host
                endpoints.append("\(scheme)://\(host):\(address.port)")
            }
            return .success(EtcdOptions(endpoints: endpoints))
        }
    }

    private let options: Options
    private let logger: Logger
    private let store: any ControllerStore
    private let metrics = ControllerMetrics()
    private let onListening: @Sendable (SocketAddress) -> Void
    private let onDNSListening: @Sendable (SocketAddress) -> Void

    /// `onListening` is told the API's address, `onDNSListening` the DNS server's. The
    /// store opens in `run`.
    public init(
        options: Options,
        logger: Logger,
        onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in },
        onDNSListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }
    ) throws {
        var options = options
        if let url = options.advertiseURL, url.hasSuffix("/") { options.advertiseURL = String(url.dropLast()) }
        self.options = options
        self.logger = logger
        self.onListening = onListening
        self.onDNSListening = onDNSListening
        // The name is a store key (`member/<name>`) and a log field.
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:")
        guard (1...253).contains(options.name.count), options.name.allSatisfy(allowed.contains) else {
            throw ControllerError(
                "--name: 1 to 253 letters, digits, '.', '-', '_' or ':', got \(options.name.debugDescription)"
            )
        }
        if let url = options.advertiseURL {
            guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil,
                parsed.path.isEmpty || parsed.path == "/"
            else { throw ControllerError("--advertise-url: expected https://host:port, got \(url.debugDescription)") }
        }
        // The registry holds the CA's key and every credential: only its owner may read it.
        try SecretFile.createPrivateDirectory(options.dataDirectory)
        self.store = try Self.openStore(options, logger: logger)
    }

    /// The store the options name: the SQLite file in the data directory (SQLite gives
    /// its journals the database file's mode), or etcd.
    private static func openStore(_ options: Options, logger: Logger) throws -> any ControllerStore {
        switch options.store {
        case .sqlite:
            let database = (options.dataDirectory as NSString).appendingPathComponent("registry.sqlite")
            try SecretFile.ensurePrivate(database)
            for journal in ["-wal", "-shm", "-journal"] { try SecretFile.narrowIfPresent(database + journal) }
            return try SQLiteStore(path: database)
        case .etcd(let etcd):
            var client = EtcdClient.Options(endpoints: etcd.endpoints)
            client.caFile = etcd.caFile
            client.certificateFile = etcd.certificateFile
            client.keyFile = etcd.keyFile
            return EtcdStore(client: try EtcdClient(options: client, logger: logger), prefix: etcd.prefix)
        }
    }

    public func run() async throws {
        let store = self.store
        let snapshot: StoreSnapshot
        do {
            snapshot = try await store.load()
        } catch {
            await store.close()
            throw ControllerError("cannot read the store: \(error)")
        }
        let controller = try Controller(store: store, snapshot: snapshot, logger: logger)
        let identity = try await IdentityService.open(
            store: store,
            snapshot: snapshot,
            trustDomain: options.trustDomain,
            supplied: options.authority,
            maxLifetime: options.certificateLifetime,
            metrics: metrics,
            logger: logger
        )
        let clock = ContinuousClock()
        let started = clock.now
        let telemetry = TelemetryStore(now: { Int((clock.now - started).components.seconds) })
        var api = ControllerAPI(
            controller: controller,
            identity: identity,
            metrics: metrics,
            telemetry: telemetry,
            token: options.token,
            logger: logger
        )
        api.protectReads = options.protectReads
        await controller.setName(options.name)
        let several = store is EtcdStore
        let relay = several ? try TelemetryRelay(roots: await identity.roots, name: options.name, logger: logger) : nil
        api.relay = relay
        let advertised = Advertised(options.advertiseURL)
        let logger = self.logger
        let onListening = self.onListening
        let metrics = self.metrics
        let options = self.options
        let caFile = (options.dataDirectory as NSString).appendingPathComponent("ca.pem")
        // The controller's own certificate: the API's server certificate (with TLS), and
        // always the client certificate it presents to sidecars' admin listeners (taps).
        let certificate = try ControllerTLS(authority: await identity.authority, listen: options.listen)
        api.tapIdentity = certificate
        let tls = options.tls ? certificate : nil
        if tls != nil { try Self.write(await identity.trustBundlePEM, to: caFile) }
        let serveTLS = options.tls
        await identity.setTrustBundleListener { bundle in
            await controller.broadcast(bundle)
            // A CA rotation step: clients get the new bundle, the controller a certificate
            // from the CA that now signs.
            do {
                if serveTLS { try Self.write(bundle.pem, to: caFile) }
                try certificate.reissue(authority: await identity.authority)
                relay?.trust(await identity.roots)
            } catch {
                logger.error("cannot renew the controller's certificate", metadata: ["error": "\(error)"])
            }
        }
        let dns = options.dns.map {
            DNSServer(options: DNSServer.Options(listen: $0, zone: options.dnsZone), registry: metrics, logger: logger)
        }
        if let dns {
            onDNSListening(try await dns.start(group: MultiThreadedEventLoopGroup.singleton))
            await controller.setChangeListener { changed, services, instances, revision in
                dns.update(changed: changed, services: services, instances: instances, revision: revision)
            }
        }
        let server: HTTPServerBuilder =
            try tls.map { try .tls(.http1(), tlsConfiguration: $0.configuration()) } ?? .http1()
        let app = Application(
            router: api.router(),
            server: server,
            configuration: ApplicationConfiguration(
                address: .hostname(options.listen.host, port: options.listen.port),
                serverName: "meshwork-controller"
            ),
            onServerRunning: { channel in
                if let address = channel.localAddress {
                    logger.info("listening", metadata: ["listener": "api", "address": "\(address)"])
                    onListening(address)
                    if let port = address.port {
                        advertised.url.withLock { url in
                            if url == nil { url = Self.advertisable(options.listen.host, port: port, tls: serveTLS) }
                        }
                    }
                }
            },
            logger: logger
        )
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                try await app.run()
            }
            group.addTask {
                // Watch streams never end by themselves: end them so the server can stop.
                try? await gracefulShutdown()
                await controller.finishWatchers()
                await dns?.stop()
                // (Ends the change stream the controller follows.)
                await store.close()
                await relay?.shutdown()
            }
            group.addTask {
                await controller.follow()
            }
            group.addTask {
                await identity.follow()
            }
            group.addTask {
                await Self.lead(
                    store: store,
                    controller: controller,
                    name: options.name,
                    ttl: options.electionTTL,
                    advertise: {
                        guard several else { return nil }
                        // The API's port is known once it listens (bounded: 10 s).
                        for _ in 0..<100 {
                            if let url = advertised.url.withLock({ $0 }) { return url }
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                        logger.warning(
                            "no URL to advertise (a wildcard --listen): telemetry sent here stays here; give --advertise-url"
                        )
                        return nil
                    },
                    logger: logger
                )
            }
            group.addTask {
                // (The sleep ends with a graceful shutdown: a stopping controller does not
                // wait out the 10 s.)
                while !Task.isCancelled, !Task.isShuttingDownGracefully {
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(10)) }
                    guard !Task.isCancelled, !Task.isShuttingDownGracefully else { break }
                    await controller.pingWatchers()
                }
            }
            group.addTask {
                // Rollouts step every second, on the leader. (Leases are the store's: it
                // deletes an instance whose lease ran out, and every controller follows.)
                await controller.setMetrics(metrics)
                while !Task.isCancelled, !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: .seconds(1))
                    await controller.driveRollouts(telemetry: telemetry)
                    if certificate.needsRenewal {
                        try? certificate.reissue(authority: await identity.authority)
                    }
                }
            }
        }
    }

    /// The URL of an API listening on `host`: nil for a wildcard (which address would
    /// others use?).
    static func advertisable(_ host: String, port: Int, tls: Bool) -> String? {
        guard !["0.0.0.0", "::", "[::]", ""].contains(host) else { return nil }
        let shown = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(tls ? "https" : "http")://\(shown):\(port)"
    }

    /// Writes a public file (the CA bundle) aside and renames it over `path`: readers never
    /// see half a file, and a link planted at `path` is replaced, not written through.
    static func write(_ text: String, to path: String) throws {
        try SecretFile.write(text, to: path, mode: 0o644)
    }

    /// The default data directory: `$XDG_STATE_HOME/meshwork`, else `~/.local/state/meshwork`.
    public static var defaultDataDirectory: String {
        let environment = ProcessInfo.processInfo.environment
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
            return (state as NSString).appendingPathComponent("meshwork")
        }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return (home as NSString).appendingPathComponent(".local/state/meshwork")
    }

    /// The token in `path`, or (when nil) the one in the data directory, created on first
    /// start with 256 random bits and mode 0600.
    public static func loadToken(path: String?, dataDirectory: String) throws -> (token: String, path: String) {
        let file = path ?? (dataDirectory as NSString).appendingPathComponent("token")
        if let text = try? String(contentsOfFile: file, encoding: .utf8) {
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else { throw ControllerError("token file \(file) is empty") }
            return (token, file)
        }
        guard path == nil else { throw ControllerError("cannot read token file \(file)") }
        try SecretFile.createPrivateDirectory(dataDirectory)
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in String(generator.next(), radix: 16) }.joined()
        try SecretFile.write(token + "\n", to: file)
        return (token, file)
    }
}

public struct ControllerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The URL this controller advertises, known once its API listens.
private final class Advertised: Sendable {
    let url: Mutex<String?>
    init(_ url: String?) { self.url = Mutex(url) }
}

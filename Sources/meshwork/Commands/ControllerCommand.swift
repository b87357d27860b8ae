import ArgumentParser
import Foundation
import Logging
import MeshworkController
import MeshworkDNS
import MeshworkModel
import ServiceLifecycle
import UnixSignals

struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract: "Run the controller: the registry, its API and watch streams.",
        discussion: """
            Starts with no arguments: the registry is kept in SQLite under the data directory, the API \
            listens on https://127.0.0.1:7070 with a certificate from the mesh CA (<data-dir>/ca.pem verifies \
            it; join tokens carry the CA's pin), and changes need the bearer token in <data-dir>/token \
            (created on first start) or in --token-file. --no-tls serves plain HTTP. SIGTERM or SIGINT stops it.
            """
    )

    @Option(
        name: .long,
        help: "Where the registry is stored (default: $XDG_STATE_HOME/meshwork or ~/.local/state/meshwork)."
    )
    var dataDir: String?

    @Option(name: .long, help: "API listen address (port 0 picks a free port).")
    var listen: String = "127.0.0.1:7070"

    @Option(
        name: .long,
        help: "File holding the API token for changes (default: <data-dir>/token, created if missing)."
    )
    var tokenFile: String?

    @Option(name: .long, help: "SPIFFE trust domain of the mesh's workload identities.")
    var trustDomain: String = "mesh.local"

    @Option(
        name: .long,
        help:
            "PEM file with the CA certificate that signs workload certificates, then its issuers up to the root (default: a root created on first start and kept in the store)."
    )
    var caCert: String?

    @Option(name: .long, help: "PEM file with the private key of --ca-cert.")
    var caKey: String?

    @Flag(
        name: .long,
        help:
            "Reads need a token too (operator token of any scope, or a sidecar credential); the default when --listen is not a loopback address."
    )
    var protectReads = false

    @Flag(
        name: .long,
        help: "Leave reads open on a non-loopback --listen address (anyone who reaches it sees the registry)."
    )
    var publicReads = false

    @Flag(
        name: .long,
        inversion: .prefixedNo,
        help:
            "Serve the API over TLS with a certificate from the mesh CA (the default); clients verify it with <data-dir>/ca.pem or a join token's CA pin."
    )
    var tls = true

    @Option(name: .long, help: "Longest (and default) workload certificate lifetime, e.g. 24h.")
    var certTTL: String = "24h"

    @Option(
        name: .long,
        help: "DNS server address, UDP and TCP (port 0 picks a free port); \"off\" runs none."
    )
    var dns: String = "127.0.0.1:8600"

    @Option(name: .long, help: "DNS domain the server answers for: orders.service.<domain>.")
    var dnsDomain: String = "mesh"

    @Option(name: .long, help: "TTL of DNS answers (and of negative answers), e.g. 5s.")
    var dnsTTL: String = "5s"

    @Option(
        name: .long,
        help:
            "Where everything is kept: sqlite (a file in --data-dir, one controller) or etcd://host:port[,host:port...] (etcds:// for TLS), shared by several controllers."
    )
    var store = "sqlite"

    @Option(name: .long, help: "With --store etcd: the key prefix of this mesh.")
    var etcdPrefix = "/meshwork"

    @Option(name: .long, help: "With --store etcds://: the CA file that verifies etcd.")
    var etcdCa: String?

    @Option(name: .long, help: "With --store etcds://: this controller's client certificate for etcd.")
    var etcdCert: String?

    @Option(name: .long, help: "With --store etcds://: the key of --etcd-cert.")
    var etcdKey: String?

    @Option(name: .long, help: "This controller's name in the leader election (default: host name and API port).")
    var name: String?

    @Option(name: .long, help: "The leader's lease, e.g. 5s: a leader that stops is replaced within about this long.")
    var electionTtl = "5s"

    @Option(
        name: .long,
        help: """
            The API URL other controllers reach this one at (followers relay telemetry to the \
            leader's; default: the --listen address, unless it is a wildcard).
            """
    )
    var advertiseUrl: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let address: HostPort
        switch HostPort.parse(listen) {
        case .success(let value): address = value
        case .failure(let error): throw CommandFailure("--listen: \(error.reason)")
        }
        guard SPIFFEID.isTrustDomain(trustDomain) else {
            throw CommandFailure("--trust-domain: must be lowercase letters, digits, '.', '-' and '_'")
        }
        guard let lifetime = DurationText.parse(certTTL), lifetime >= .seconds(10) else {
            throw CommandFailure("--cert-ttl: expected a duration of at least 10s like 24h, got \"\(certTTL)\"")
        }
        let dnsAddress: HostPort?
        if dns == "off" {
            dnsAddress = nil
        } else {
            switch HostPort.parse(dns) {
            case .success(let value): dnsAddress = value
            case .failure(let error): throw CommandFailure("--dns: \(error.reason)")
            }
        }
        let domainLabels = dnsDomain.lowercased().split(separator: ".", omittingEmptySubsequences: false)
        guard !dnsDomain.isEmpty,
            domainLabels.allSatisfy({ label in
                (1...63).contains(label.count) && label.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" }
                    && label.allSatisfy(\.isASCII)
            })
        else {
            throw CommandFailure(
                "--dns-domain: expected a domain name like mesh or mesh.internal, got \"\(dnsDomain)\""
            )
        }
        guard let ttl = DurationText.parse(dnsTTL), ttl >= .zero, ttl <= .seconds(86_400) else {
            throw CommandFailure("--dns-ttl: expected a duration between 0s and 24h like 5s, got \"\(dnsTTL)\"")
        }
        var authority: (certificates: String, key: String)?
        switch (caCert, caKey) {
        case (nil, nil): break
        case (let cert?, let key?):
            guard let certificates = try? String(contentsOfFile: cert, encoding: .utf8) else {
                throw CommandFailure("--ca-cert: cannot read \(cert)")
            }
            guard let keyText = try? String(contentsOfFile: key, encoding: .utf8) else {
                throw CommandFailure("--ca-key: cannot read \(key)")
            }
            authority = (certificates, keyText)
        default:
            throw CommandFailure("--ca-cert and --ca-key go together")
        }
        let dataDirectory = dataDir ?? ControllerServer.defaultDataDirectory
        let token: (token: String, path: String)
        do {
            token = try ControllerServer.loadToken(path: tokenFile, dataDirectory: dataDirectory)
        } catch {
            throw CommandFailure("\(error)")
        }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "meshwork.controller")
        logger.info("starting", metadata: ["data-dir": "\(dataDirectory)", "token-file": "\(token.path)"])
        let server: ControllerServer
        var options = ControllerServer.Options(dataDirectory: dataDirectory, listen: address, token: token.token)
        options.trustDomain = trustDomain
        options.authority = authority
        options.certificateLifetime = lifetime
        if protectReads, publicReads { throw CommandFailure("--protect-reads and --public-reads exclude each other") }
        options.protectReads = protectReads || (!publicReads && !address.isLoopback)
        if options.protectReads, !protectReads {
            logger.notice(
                "the API listens beyond loopback: reads need a token too (--public-reads leaves them open)",
                metadata: ["listen": "\(address)"]
            )
        } else if publicReads, !address.isLoopback {
            logger.warning(
                "reads are open to anyone who reaches the API (--public-reads)",
                metadata: ["listen": "\(address)"]
            )
        }
        options.tls = tls
        if store != "sqlite" {
            switch ControllerServer.EtcdOptions.parse(store) {
            case .success(var etcd):
                etcd.prefix = etcdPrefix
                etcd.caFile = etcdCa
                etcd.certificateFile = etcdCert
                etcd.keyFile = etcdKey
                guard (etcdCert == nil) == (etcdKey == nil) else {
                    throw CommandFailure("--etcd-cert and --etcd-key go together")
                }
                guard etcdPrefix.hasPrefix("/"), !etcdPrefix.hasSuffix("/") || etcdPrefix == "/" else {
                    throw CommandFailure("--etcd-prefix: expected a path like /meshwork, got \"\(etcdPrefix)\"")
                }
                options.store = .etcd(etcd)
            case .failure(let error):
                throw CommandFailure("--store: \(error)")
            }
        }
        guard let electionTTL = DurationText.parse(electionTtl), electionTTL >= .seconds(1),
            electionTTL <= .seconds(60)
        else {
            throw CommandFailure(
                "--election-ttl: expected a duration between 1s and 60s like 5s, got \"\(electionTtl)\""
            )
        }
        options.electionTTL = electionTTL
        options.advertiseURL = advertiseUrl
        options.name = name ?? "\(ProcessInfo.processInfo.hostName):\(address.port)"
        options.dns = dnsAddress
        options.dnsZone = DNSZone.Options(
            domain: domainLabels.joined(separator: "."),
            ttl: UInt32(ttl.components.seconds)
        )
        do {
            server = try ControllerServer(options: options, logger: logger)
        } catch {
            throw CommandFailure("cannot open the store (\(store == "sqlite" ? dataDirectory : store)): \(error)")
        }
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await serviceGroup.run()
    }
}

import MeshworkModel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// An HTTPS gateway listener's certificates (the operator's, not the mesh CA's): the one
/// whose `serverNames` match the client's SNI, else the first. Read per handshake, so a
/// reload swaps them without touching open connections. ALPN offers h2 and http/1.1.
final class GatewayTLS: Sendable {
    private struct Loaded: Sendable {
        var context: NIOSSLContext
        var byName: [(pattern: String, chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)]
    }

    private let loaded: NIOLockedValueBox<Loaded?>

    /// Loads the files; errors name the field (`<path>.certificates[i].cert`).
    init(certificates: [GatewayCertificate], path: String) throws(ConfigErrors) {
        loaded = NIOLockedValueBox(nil)
        try reload(certificates: certificates, path: path)
    }

    func reload(certificates: [GatewayCertificate], path: String) throws(ConfigErrors) {
        var errors: [ConfigError] = []
        var entries: [(pattern: String, chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)] = []
        var first: (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)?
        for (index, certificate) in certificates.enumerated() {
            let field = "\(path).certificates[\(index)]"
            let chain: [NIOSSLCertificate]
            let key: NIOSSLPrivateKey
            do {
                chain = try NIOSSLCertificate.fromPEMFile(certificate.cert)
                guard !chain.isEmpty else { throw GatewayTLSFileError("no certificate in the file") }
            } catch {
                errors.append(ConfigError(path: "\(field).cert", reason: "cannot load \(certificate.cert): \(error)"))
                continue
            }
            do {
                key = try NIOSSLPrivateKey(file: certificate.key, format: .pem)
            } catch {
                errors.append(ConfigError(path: "\(field).key", reason: "cannot load \(certificate.key): \(error)"))
                continue
            }
            if first == nil { first = (chain, key) }
            for name in certificate.serverNames { entries.append((name.lowercased(), chain, key)) }
        }
        guard errors.isEmpty, let first else { throw ConfigErrors(errors) }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: first.chain.map { .certificate($0) },
            privateKey: .privateKey(first.key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["h2", "http/1.1"]
        configuration.sslContextCallback = { [weak self] values, promise in
            var override = NIOSSLContextConfigurationOverride()
            if let name = values.serverHostname, let match = self?.certificate(for: name) {
                override.certificateChain = match.chain.map { .certificate($0) }
                override.privateKey = .privateKey(match.key)
            }
            promise.succeed(override)
        }
        do {
            let context = try NIOSSLContext(configuration: configuration)
            loaded.withLockedValue { $0 = Loaded(context: context, byName: entries) }
        } catch {
            throw ConfigErrors([
                ConfigError(
                    path: "\(path).certificates[0]",
                    reason: "certificate and key do not make a TLS context: \(error)"
                )
            ])
        }
    }

    /// The certificate for an SNI name: an exact name first, then a wildcard.
    private func certificate(for serverName: String) -> (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)? {
        let entries = loaded.withLockedValue { $0?.byName ?? [] }
        let name = serverName.lowercased()
        if let exact = entries.first(where: { $0.pattern == name }) { return (exact.chain, exact.key) }
        if let wildcard = entries.first(where: { GatewayRoute.hostMatches(pattern: $0.pattern, host: name) }) {
            return (wildcard.chain, wildcard.key)
        }
        return nil
    }

    func serverHandler() -> NIOSSLServerHandler? {
        loaded.withLockedValue { $0 }.map { NIOSSLServerHandler(context: $0.context) }
    }
}

private struct GatewayTLSFileError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

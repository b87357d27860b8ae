import Crypto
import Foundation
import MeshworkIdentity
import MeshworkModel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// The API's own TLS: a server certificate from the mesh CA (SPIFFE ID
/// `spiffe://<trust-domain>/controller`, DNS `localhost` and the listen address), issued at
/// start and again after every CA change and before it expires. Each handshake takes the
/// current one, so a reissue needs no restart.
final class ControllerTLS: Sendable {
    private struct Issued: Sendable {
        var chain: [NIOSSLCertificate]
        var key: NIOSSLPrivateKey
        var notAfter: Date
    }

    private let current: NIOLockedValueBox<Issued>
    private let listen: HostPort
    static let lifetime: Duration = .seconds(30 * 86_400)

    init(authority: CertificateAuthority, listen: HostPort) throws {
        self.listen = listen
        current = NIOLockedValueBox(try Self.issue(authority: authority, listen: listen))
    }

    func reissue(authority: CertificateAuthority) throws {
        let issued = try Self.issue(authority: authority, listen: listen)
        current.withLockedValue { $0 = issued }
    }

    /// Whether less than a third of the lifetime is left.
    var needsRenewal: Bool {
        current.withLockedValue { $0.notAfter }.timeIntervalSinceNow < Double(Self.lifetime.components.seconds) / 3
    }

    private static func issue(authority: CertificateAuthority, listen: HostPort) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        var ips: [[UInt8]] = [[127, 0, 0, 1]]
        var names = ["localhost"]
        if let bytes = ipv4Bytes(listen.host) {
            if bytes != [0, 0, 0, 0], bytes != ips[0] { ips.append(bytes) }
        } else if listen.host != "localhost", !listen.host.contains(":") {
            names.append(listen.host)
        }
        let chain = try authority.issueServer(
            key: Certificate.PrivateKey(key),
            id: .controller(trustDomain: authority.trustDomain),
            dnsNames: names,
            ipAddresses: ips,
            lifetime: lifetime
        )
        let nioChain = try chain.map { certificate in
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            return try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
        }
        return Issued(
            chain: nioChain,
            key: try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem),
            notAfter: chain[0].notValidAfter
        )
    }

    private static func ipv4Bytes(_ host: String) -> [UInt8]? {
        let parts = host.split(separator: ".")
        guard parts.count == 4 else { return nil }
        let bytes = parts.compactMap { UInt8($0) }
        return bytes.count == 4 ? bytes : nil
    }

    /// The server configuration: TLS 1.2 or later; the certificate of each handshake is the
    /// current one.
    func configuration() -> TLSConfiguration {
        let issued = current.withLockedValue { $0 }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: issued.chain.map { .certificate($0) },
            privateKey: .privateKey(issued.key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.sslContextCallback = { [current] _, promise in
            let issued = current.withLockedValue { $0 }
            var override = NIOSSLContextConfigurationOverride()
            override.certificateChain = issued.chain.map { .certificate($0) }
            override.privateKey = .privateKey(issued.key)
            promise.succeed(override)
        }
        return configuration
    }

    /// The client configuration for a connection to a sidecar's admin listener: this
    /// certificate (its SPIFFE ID is the controller's, which the sidecar requires for `/tap`
    /// and `/config`), and the mesh's roots for the sidecar's workload certificate. Sidecar
    /// certificates name a SPIFFE ID, not a host, so only the chain is verified.
    func clientConfiguration(trustBundlePEM: String) throws -> TLSConfiguration {
        let issued = current.withLockedValue { $0 }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateChain = issued.chain.map { .certificate($0) }
        configuration.privateKey = .privateKey(issued.key)
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(trustBundlePEM.utf8)))
        configuration.certificateVerification = .noHostnameVerification
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }
}

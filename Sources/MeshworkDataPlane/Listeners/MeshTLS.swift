import MeshworkModel
import NIOSSL

/// The TLS contexts of one certificate, key and trust bundle: from the config's static mTLS
/// files, or from the workload certificate the controller issued.
///
/// Both sides verify the peer against the mesh CA (no hostname check: identities are SPIFFE
/// URIs, checked by `MeshTLSSource` on the outbound side and by authorization inbound).
/// TLS 1.2 is the floor, 1.3 preferred.
struct MeshTLS: Sendable {
    /// Inbound listener: requires a client certificate from the mesh CA; ALPN h2, http/1.1.
    let server: NIOSSLContext
    /// Outbound HTTP to peer sidecars: ALPN h2.
    let clientHTTP2: NIOSSLContext
    /// Outbound HTTP/1.1 upgrade requests (WebSocket) to peer sidecars: ALPN http/1.1.
    let clientHTTP1: NIOSSLContext
    /// Outbound opaque TCP to peer sidecars: no ALPN.
    let clientTCP: NIOSSLContext
    /// The workload identity the certificate carries (nil for static files).
    let identity: SPIFFEID?

    init(files: TLSFiles) throws(ConfigErrors) {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        let roots: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(files.cert)
        } catch {
            throw ConfigErrors([
                ConfigError(path: "tls.cert", reason: "cannot read certificate \(files.cert): \(error)")
            ])
        }
        if chain.isEmpty {
            throw ConfigErrors([ConfigError(path: "tls.cert", reason: "no certificate in \(files.cert)")])
        }
        do {
            key = try NIOSSLPrivateKey(file: files.key, format: .pem)
        } catch {
            throw ConfigErrors([ConfigError(path: "tls.key", reason: "cannot read private key \(files.key): \(error)")])
        }
        do {
            roots = try NIOSSLCertificate.fromPEMFile(files.ca)
            if roots.isEmpty { throw NIOSSLError.failedToLoadCertificate }
        } catch {
            throw ConfigErrors([ConfigError(path: "tls.ca", reason: "cannot read CA bundle \(files.ca): \(error)")])
        }
        do {
            try self.init(chain: chain, key: key, roots: roots, identity: nil)
        } catch {
            throw ConfigErrors([
                ConfigError(path: "tls", reason: "certificate and key do not make a TLS context: \(error)")
            ])
        }
    }

    init(chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, roots: [NIOSSLCertificate], identity: SPIFFEID?) throws {
        let certificates = chain.map { NIOSSLCertificateSource.certificate($0) }
        var server = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: certificates,
            privateKey: .privateKey(key),
            trustRoots: .certificates(roots)
        )
        server.minimumTLSVersion = .tlsv12
        server.applicationProtocols = ["h2", "http/1.1"]

        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = certificates
        client.privateKey = .privateKey(key)
        client.trustRoots = .certificates(roots)
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv12
        var clientHTTP2 = client
        clientHTTP2.applicationProtocols = ["h2"]
        var clientHTTP1 = client
        clientHTTP1.applicationProtocols = ["http/1.1"]
        self.server = try NIOSSLContext(configuration: server)
        self.clientHTTP2 = try NIOSSLContext(configuration: clientHTTP2)
        self.clientHTTP1 = try NIOSSLContext(configuration: clientHTTP1)
        self.clientTCP = try NIOSSLContext(configuration: client)
        self.identity = identity
    }
}

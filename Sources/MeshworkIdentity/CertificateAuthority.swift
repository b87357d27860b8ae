import Crypto
import Foundation
import MeshworkModel
import SwiftASN1
import X509

/// The mesh CA: signs workload certificates (X.509-SVIDs) for CSRs the controller has
/// authenticated, and the controller's own API certificate.
///
/// The signing certificate is the root itself (created on first start), or an
/// intermediate the operator supplies with its issuers; `trustBundle` is the root(s) peers
/// verify against, `chain` what a leaf is sent with.
public struct CertificateAuthority: Sendable {
    public let trustDomain: String
    /// The certificate that signs leaves.
    public let certificate: Certificate
    /// Certificates sent after a leaf: the signing certificate and its issuers, without the root.
    public let chain: [Certificate]
    /// The root at the top of `certificate`'s chain.
    public let root: Certificate
    private let key: Certificate.PrivateKey

    /// The longest leaf lifetime the CA signs.
    public static let maxLeafLifetime: Duration = .seconds(30 * 86_400)

    /// Creates a root CA: EC P-256, self-signed, `pathLen` 1 so an intermediate can be added.
    public static func generateRoot(
        trustDomain: String,
        now: Date = Date(),
        lifetime: Duration = .seconds(10 * 365 * 86_400)
    ) throws -> CertificateAuthority {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let name = try DistinguishedName {
            OrganizationName("meshwork")
            CommonName("meshwork root CA \(trustDomain) \(Int(now.timeIntervalSince1970))")
        }
        let root = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(lifetime.seconds),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 1))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
                SubjectAlternativeNames([.uniformResourceIdentifier("spiffe://\(trustDomain)")])
            },
            issuerPrivateKey: key
        )
        return CertificateAuthority(trustDomain: trustDomain, certificate: root, chain: [], root: root, key: key)
    }

    private init(
        trustDomain: String,
        certificate: Certificate,
        chain: [Certificate],
        root: Certificate,
        key: Certificate.PrivateKey
    ) {
        self.trustDomain = trustDomain
        self.certificate = certificate
        self.chain = chain
        self.root = root
        self.key = key
    }

    /// Loads a CA from PEM: `certificatePEM` holds the signing certificate first, then its
    /// issuers up to and including the self-signed root; `keyPEM` the signing key.
    public init(certificatePEM: String, keyPEM: String, trustDomain: String) throws(IdentityError) {
        let certificates = try Self.certificates(fromPEM: certificatePEM, field: "ca-cert")
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: keyPEM)
        } catch {
            throw IdentityError(field: "ca-key", reason: "not a PEM private key: \(error)")
        }
        guard let signing = certificates.first, let root = certificates.last else {
            throw IdentityError(field: "ca-cert", reason: "no certificate")
        }
        guard key.publicKey == signing.publicKey else {
            throw IdentityError(field: "ca-key", reason: "does not match the first certificate in ca-cert")
        }
        guard case .isCertificateAuthority? = try? signing.extensions.basicConstraints else {
            throw IdentityError(field: "ca-cert", reason: "the signing certificate is not a CA (basicConstraints)")
        }
        guard root.issuer == root.subject, root.publicKey.isValidSignature(root.signature, for: root) else {
            throw IdentityError(field: "ca-cert", reason: "the last certificate must be the self-signed root")
        }
        for (child, parent) in zip(certificates, certificates.dropFirst())
        where !parent.publicKey.isValidSignature(child.signature, for: child) {
            throw IdentityError(
                field: "ca-cert",
                reason: "\(child.subject) is not signed by the next certificate (\(parent.subject))"
            )
        }
        self.init(
            trustDomain: trustDomain,
            certificate: signing,
            chain: Array(certificates.dropLast()),
            root: root,
            key: key
        )
    }

    /// The signing certificate and its issuers (root last), and the key, as PEM: what the
    /// store keeps.
    public func pem() throws -> (certificates: String, key: String) {
        let all = certificate == root ? [root] : chain + [root]
        return (try Self.pem(all), try key.serializeAsPEM().pemString + "\n")
    }

    // MARK: issuing

    /// Signs a workload certificate for `id` from `csr`, following the X.509-SVID rules
    /// (spiffe/standards X509-SVID.md): the SPIFFE ID as the only URI SAN, not a CA, key
    /// usage digitalSignature (critical), EKU server and client auth. Returns the leaf and
    /// the chain to send with it.
    ///
    /// The CSR proves possession of its key (its signature is checked); a CSR that asks for
    /// another identity than the one its credential allows is refused, not rewritten.
    public func issue(
        csr: CertificateSigningRequest,
        for id: SPIFFEID,
        lifetime: Duration,
        now: Date = Date()
    ) throws(IdentityError) -> [Certificate] {
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw IdentityError(field: "csr", reason: "the CSR's signature does not match its public key")
        }
        try Self.checkKey(csr.publicKey)
        if let requested = try? csr.attributes.extensionRequest?.extensions.subjectAlternativeNames {
            for name in requested {
                guard case .uniformResourceIdentifier(let uri) = name else {
                    throw IdentityError(field: "csr.san", reason: "only a SPIFFE URI may be requested, not \(name)")
                }
                guard uri == id.description else {
                    throw IdentityError(
                        field: "csr.san",
                        reason: "requests \(uri) but the credential is for \(id)"
                    )
                }
            }
        }
        guard lifetime > .zero, lifetime <= Self.maxLeafLifetime else {
            throw IdentityError(field: "lifetime", reason: "must be above 0 and at most 30 days")
        }
        let notAfter = min(now.addingTimeInterval(lifetime.seconds), certificate.notValidAfter)
        do {
            let leaf = try Certificate(
                version: .v3,
                serialNumber: Certificate.SerialNumber(),
                publicKey: csr.publicKey,
                notValidBefore: now.addingTimeInterval(-60),
                notValidAfter: notAfter,
                issuer: certificate.subject,
                subject: try DistinguishedName {
                    OrganizationName(id.trustDomain)
                    CommonName(id.serviceName ?? id.path)
                },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    SubjectAlternativeNames([.uniformResourceIdentifier(id.description)])
                    SubjectKeyIdentifier(hash: csr.publicKey)
                    AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier)
                },
                issuerPrivateKey: key
            )
            return [leaf] + chain
        } catch {
            throw IdentityError(field: "csr", reason: "cannot sign: \(error)")
        }
    }

    /// A server certificate for the controller's own API: its SPIFFE ID plus the DNS names
    /// and IP addresses clients dial.
    public func issueServer(
        key: Certificate.PrivateKey,
        id: SPIFFEID,
        dnsNames: [String],
        ipAddresses: [[UInt8]],
        lifetime: Duration,
        now: Date = Date()
    ) throws -> [Certificate] {
        var names: [GeneralName] = [.uniformResourceIdentifier(id.description)]
        names += dnsNames.map { .dnsName($0) }
        names += ipAddresses.map { .ipAddress(ASN1OctetString(contentBytes: $0[...])) }
        let leaf = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-60),
            notValidAfter: min(now.addingTimeInterval(lifetime.seconds), certificate.notValidAfter),
            issuer: certificate.subject,
            subject: try DistinguishedName {
                OrganizationName(id.trustDomain)
                CommonName("meshwork controller")
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
                AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier)
            },
            issuerPrivateKey: self.key
        )
        return [leaf] + chain
    }

    private var authorityKeyIdentifier: ArraySlice<UInt8>? {
        (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier
            ?? SubjectKeyIdentifier(
                hash: certificate.publicKey
            ).keyIdentifier
    }

    /// Workload keys must be EC P-256 or P-384 (what every TLS 1.3 peer supports and signs fast).
    static func checkKey(_ key: Certificate.PublicKey) throws(IdentityError) {
        guard P256.Signing.PublicKey(key) != nil || P384.Signing.PublicKey(key) != nil else {
            throw IdentityError(field: "csr.publicKey", reason: "must be an EC P-256 or P-384 key")
        }
    }

    // MARK: PEM

    /// Every certificate in a PEM text, in order.
    public static func certificates(fromPEM text: String, field: String) throws(IdentityError) -> [Certificate] {
        let documents: [PEMDocument]
        do {
            documents = try PEMDocument.parseMultiple(pemString: text)
        } catch {
            throw IdentityError(field: field, reason: "not PEM: \(error)")
        }
        var certificates: [Certificate] = []
        for document in documents where document.discriminator == "CERTIFICATE" {
            do {
                certificates.append(try Certificate(pemDocument: document))
            } catch {
                throw IdentityError(field: field, reason: "not a certificate: \(error)")
            }
        }
        guard !certificates.isEmpty else { throw IdentityError(field: field, reason: "no CERTIFICATE in the PEM") }
        return certificates
    }

    /// The one root of a PEM bundle that a join token pins: the DER of the certificate
    /// whose SHA-256 is `pin` (nil when none is), with the fingerprints of all of them (for
    /// the error); nil when the bundle does not parse. Only that certificate may be trusted
    /// from a bundle fetched over a connection that verified nothing: any other in it may
    /// be an interceptor's own root.
    public static func pinnedRoot(inPEMBundle pem: String, pin: String) -> (der: [UInt8]?, fingerprints: [String])? {
        guard let documents = try? PEMDocument.parseMultiple(pemString: pem), !documents.isEmpty else { return nil }
        var fingerprints: [String] = []
        var pinned: [UInt8]?
        for document in documents {
            guard document.discriminator == "CERTIFICATE", let certificate = try? Certificate(pemDocument: document)
            else { return nil }
            var serializer = DER.Serializer()
            guard (try? serializer.serialize(certificate)) != nil else { return nil }
            let der = serializer.serializedBytes
            let fingerprint = SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
            fingerprints.append(fingerprint)
            if fingerprint == pin, pinned == nil { pinned = der }
        }
        return (pinned, fingerprints)
    }

    /// The fingerprints of every certificate in a PEM bundle; nil when the bundle does not
    /// parse.
    public static func fingerprints(ofPEMBundle pem: String) -> [String]? {
        guard let documents = try? PEMDocument.parseMultiple(pemString: pem) else { return nil }
        var result: [String] = []
        for document in documents {
            guard let certificate = try? Certificate(pemDocument: document) else { return nil }
            result.append(fingerprint(certificate))
        }
        return result
    }

    /// SHA-256 of the certificate's DER, hex: how a root is named in the trust bundle.
    public static func fingerprint(_ certificate: Certificate) -> String {
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(certificate)) != nil else { return "" }
        return SHA256.hash(data: serializer.serializedBytes).map { String(format: "%02x", $0) }.joined()
    }

    public static func pem(_ certificates: [Certificate]) throws -> String {
        try certificates.map { try $0.serializeAsPEM().pemString + "\n" }.joined()
    }
}

/// Why an identity operation was refused: the field and the reason, for the API's 400s
/// and the sidecar's logs.
public struct IdentityError: Error, Sendable, Hashable, CustomStringConvertible {
    public let field: String
    public let reason: String

    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { "\(field): \(reason)" }
}

extension Duration {
    /// Whole and fractional seconds, for `Date` arithmetic.
    var seconds: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}

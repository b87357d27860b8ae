import Crypto
import Foundation
import MeshworkModel
import SwiftASN1
import X509

/// A sidecar's own key: generated in memory on start (and again on every renewal), never
/// sent anywhere (only CSRs for it leave the process); written only to the sidecar's own
/// identity cache (mode 0600) when a cache file is configured.
public struct WorkloadKey: Sendable {
    private let key: P256.Signing.PrivateKey

    public init() {
        key = P256.Signing.PrivateKey()
    }

    /// The key `pem` holds (from the identity cache).
    public init(pem: String) throws {
        key = try P256.Signing.PrivateKey(pemRepresentation: pem)
    }

    public var pem: String { key.pemRepresentation + "\n" }

    public var publicKey: Certificate.PublicKey { Certificate.PublicKey(key.publicKey) }

    /// A CSR that leaves the identity to the controller (it takes it from the credential
    /// the request comes with), in PEM.
    public func csr(commonName: String) throws -> String {
        let request = try CertificateSigningRequest(
            version: .v1,
            subject: try DistinguishedName { CommonName(commonName) },
            privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256
        )
        return try request.serializeAsPEM().pemString + "\n"
    }

    /// A CSR for `id`, asking for it as the only URI SAN, in PEM.
    public func csr(for id: SPIFFEID) throws -> String {
        let request = try CertificateSigningRequest(
            version: .v1,
            subject: try DistinguishedName { CommonName(id.serviceName ?? id.path) },
            privateKey: Certificate.PrivateKey(key),
            attributes: try CertificateSigningRequest.Attributes(
                [
                    .init(
                        ExtensionRequest(
                            extensions: try Certificate.Extensions {
                                SubjectAlternativeNames([.uniformResourceIdentifier(id.description)])
                            }
                        )
                    )
                ]
            ),
            signatureAlgorithm: .ecdsaWithSHA256
        )
        return try request.serializeAsPEM().pemString + "\n"
    }

    /// Proof that the holder of this key asks for `csrPEM`: an ECDSA P-256/SHA-256
    /// signature over the CSR's DER, base64. A renewal sends it with the current
    /// certificate instead of a join token.
    public func proof(forCSR csrPEM: String) throws -> String {
        let der = try PEMDocument(pemString: csrPEM).derBytes
        return Data(try key.signature(for: der).derRepresentation).base64EncodedString()
    }
}

/// What the controller answers a certificate request with.
public struct IssuedCertificate: Sendable, Hashable, Codable {
    /// The leaf first, then the chain up to (not including) the root.
    public var certificate: String
    /// The roots peers are verified against (two during a CA rotation).
    public var trustBundle: String
    public var spiffeID: String
    public var notBefore: Date
    public var notAfter: Date
    /// When the controller signed it (`notBefore` is backdated for clock skew).
    public var issuedAt: Date
    /// A bearer credential for this workload's own registry calls (its instance only).
    public var credential: String?
    /// Fingerprint (SHA-256 of the DER) of the root the certificate chains to: when the
    /// trust bundle names another active root (a CA rotation), the sidecar renews at once.
    public var root: String?

    public init(
        certificate: String,
        trustBundle: String,
        spiffeID: String,
        notBefore: Date,
        notAfter: Date,
        issuedAt: Date,
        credential: String?,
        root: String? = nil
    ) {
        self.certificate = certificate
        self.trustBundle = trustBundle
        self.spiffeID = spiffeID
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.issuedAt = issuedAt
        self.credential = credential
        self.root = root
    }

    /// When to renew: two thirds of the way from issuance to expiry.
    public var renewAt: Date {
        issuedAt.addingTimeInterval(notAfter.timeIntervalSince(issuedAt) * 2 / 3)
    }
}

/// Reading identities out of certificates.
public enum CertificateIdentity {
    /// The SPIFFE IDs in a certificate's URI SANs.
    public static func spiffeIDs(of certificate: Certificate) -> [SPIFFEID] {
        guard let names = try? certificate.extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { name in
            if case .uniformResourceIdentifier(let uri) = name { return SPIFFEID(uri) }
            return nil
        }
    }

    /// The single SPIFFE ID of a workload certificate, from its DER bytes; nil when it has
    /// none or several (the X.509-SVID rules allow exactly one).
    public static func spiffeID(fromDER der: [UInt8]) -> SPIFFEID? {
        guard let certificate = try? Certificate(derEncoded: der) else { return nil }
        let ids = spiffeIDs(of: certificate)
        return ids.count == 1 ? ids[0] : nil
    }

    /// Checks a renewal: `chainPEM` (leaf first) must chain to one of `roots` and be valid
    /// `now`, carry exactly one SPIFFE ID, and `proof` must be the leaf key's signature
    /// over `csrPEM`. Returns the identity to issue the new certificate for.
    public static func verifyRenewal(
        chainPEM: String,
        csrPEM: String,
        proof: String,
        roots: [Certificate],
        now: Date = Date()
    ) async throws(IdentityError) -> SPIFFEID {
        let chain = try CertificateAuthority.certificates(fromPEM: chainPEM, field: "certificate")
        let leaf = chain[0]
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy(fixedValidationTime: now)
        }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(chain.dropFirst()))
        guard case .validCertificate = result else {
            throw IdentityError(
                field: "certificate",
                reason: "not a valid certificate from the mesh CA (expired, not yet valid, or another CA)"
            )
        }
        let ids = spiffeIDs(of: leaf)
        guard ids.count == 1 else {
            throw IdentityError(field: "certificate", reason: "must carry exactly one SPIFFE ID, has \(ids.count)")
        }
        guard let signature = Data(base64Encoded: proof),
            let der = try? PEMDocument(pemString: csrPEM).derBytes,
            leaf.publicKey.isValidSignature(signature, for: der, signatureAlgorithm: .ecdsaWithSHA256)
        else {
            throw IdentityError(field: "proof", reason: "not a signature over the CSR by the certificate's key")
        }
        return ids[0]
    }
}

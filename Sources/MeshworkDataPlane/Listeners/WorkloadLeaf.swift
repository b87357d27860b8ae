import MeshworkModel
import NIOConcurrencyHelpers
import NIOSSL
import SwiftASN1
import X509

/// The X.509-SVID rules for a workload's own certificate (SPIFFE X509-SVID 4.1, 4.3), checked
/// on every mesh handshake, both ways, with static files too: chain verification alone
/// accepts any certificate that chains to a trusted root, and a root chains to itself, so
/// the mesh CA's own certificate (or any intermediate) would pass as a workload.
enum WorkloadLeaf {
    /// What the checks read off one certificate: the same for every handshake with it.
    struct Facts: Sendable {
        /// Why it cannot be a workload's leaf (nil: it can), revocation aside.
        var refusal: String?
        /// The serial number, lowercase hex, as the controller's revocation list names it.
        var serial: String?
        /// The SPIFFE IDs of its URI SANs.
        var identities: [SPIFFEID]
    }

    /// Facts by certificate (its DER): a sidecar meets the same few peer certificates on
    /// every connection, and parsing one with swift-certificates and reading its SANs was
    /// 11% of a full handshake's CPU (perf, `bench/run.py --handshakes`). Bounded: a full
    /// cache is emptied (a peer presenting ever new certificates costs a parse each, never
    /// memory). Revocation is checked per handshake against the serial, so a revocation
    /// takes effect whatever the cache holds.
    private static let cache = NIOLockedValueBox([[UInt8]: Facts]())
    static let cacheCapacity = 1024

    static func facts(_ certificate: NIOSSLCertificate) -> Facts {
        guard let der = try? certificate.toDERBytes() else {
            return Facts(refusal: "the certificate does not parse", serial: nil, identities: [])
        }
        if let known = cache.withLockedValue({ $0[der] }) { return known }
        let parsed = try? Certificate(derEncoded: der)
        let facts = Facts(
            refusal: parsed.map(staticRefusal) ?? "the certificate does not parse",
            serial: parsed.map { hex($0.serialNumber.bytes) },
            identities: MeshTLSSource.spiffeIDs(of: certificate)
        )
        cache.withLockedValue { cache in
            if cache.count >= cacheCapacity { cache.removeAll(keepingCapacity: true) }
            cache[der] = facts
        }
        return facts
    }

    static func hex(_ bytes: some Collection<UInt8>) -> String { Hex.lowercase(bytes) }

    /// Why `certificate` cannot be a workload's leaf; nil when it can: not revoked,
    /// basicConstraints CA:FALSE (or absent), a keyUsage with digitalSignature and neither
    /// keyCertSign nor cRLSign.
    static func refusal(_ certificate: NIOSSLCertificate, revoked: Set<String> = []) -> String? {
        let facts = facts(certificate)
        if !revoked.isEmpty, let serial = facts.serial, revoked.contains(serial) {
            return "a revoked certificate (serial \(serial))"
        }
        return facts.refusal
    }

    private static func staticRefusal(_ parsed: Certificate) -> String? {
        switch Result(catching: { try parsed.extensions.basicConstraints }) {
        case .success(.isCertificateAuthority?): return "a CA certificate (basicConstraints CA:TRUE)"
        case .failure: return "unreadable basicConstraints"
        default: break
        }
        switch Result(catching: { try parsed.extensions.keyUsage }) {
        case .success(let usage?):
            if usage.keyCertSign || usage.cRLSign { return "a CA's key usage (keyCertSign or cRLSign)" }
            if !usage.digitalSignature { return "no digitalSignature key usage" }
            return nil
        case .success(nil): return "no key usage"
        case .failure: return "unreadable key usage"
        }
    }
}

/// The peer presented a certificate that is no workload's (a CA's, or without the key
/// usages of one).
struct NotAWorkloadCertificate: Error, CustomStringConvertible {
    let reason: String
    var description: String { "the peer's certificate is not a workload's: \(reason)" }
}

import MeshworkModel
import NIOSSL
import SwiftASN1
import X509

/// The X.509-SVID rules for a workload's own certificate (SPIFFE X509-SVID 4.1, 4.3), checked
/// on every mesh handshake, both ways, with static files too: chain verification alone
/// accepts any certificate that chains to a trusted root, and a root chains to itself, so
/// the mesh CA's own certificate (or any intermediate) would pass as a workload.
enum WorkloadLeaf {
    /// Why `certificate` cannot be a workload's leaf; nil when it can: basicConstraints
    /// CA:FALSE (or absent), a keyUsage with digitalSignature and neither keyCertSign nor
    /// cRLSign.
    /// The serial number, lowercase hex, as the controller's revocation list names it.
    static func serial(_ certificate: NIOSSLCertificate) -> String? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else {
            return nil
        }
        return hex(parsed.serialNumber.bytes)
    }

    static func hex(_ bytes: some Collection<UInt8>) -> String { Hex.lowercase(bytes) }

    static func refusal(_ certificate: NIOSSLCertificate, revoked: Set<String> = []) -> String? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else {
            return "the certificate does not parse"
        }
        if !revoked.isEmpty {
            let serial = hex(parsed.serialNumber.bytes)
            if revoked.contains(serial) { return "a revoked certificate (serial \(serial))" }
        }
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

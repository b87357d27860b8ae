import Foundation
import Logging
import MeshworkIdentity
import MeshworkModel
import X509

/// Revocation (issue 16, item 8): `POST /v1/revocations` with an instance, a service or a
/// join token. Every unexpired workload certificate issued under it (join, then renewals)
/// is revoked: its sidecar credential is deleted (no more registration, heartbeats or
/// telemetry), renewals presenting it are refused, and its serial goes to every sidecar
/// with the trust bundle, so peers refuse it at the next handshake. A revoked join token is
/// deleted too. Why both: short lifetimes alone leave a stolen certificate usable for up to
/// its lifetime (24 h by default); a pushed list closes it within one watch push, and the
/// list stays small because an entry is dropped when its certificate expires.
extension IdentityService {
    struct Revocation: Sendable {
        enum Scope: String, Sendable { case instance, service, token }
        var scope: Scope
        var value: String
    }

    /// Revokes what `revocation` names; returns the serials revoked now. The trust bundle
    /// listener pushes the new list.
    func revoke(_ revocation: Revocation, now: Date = Date()) async throws -> [String] {
        // Marked before the first suspension: an issue of this scope that is in flight
        // sees it when it resumes (IdentityService.issue) and is refused.
        let scope = "\(revocation.scope.rawValue):\(revocation.value)"
        revokingScopes[scope] = now
        let oldest = now.addingTimeInterval(-Double(maxLifetime.components.seconds))
        let stale = revokingScopes.filter { $0.value <= oldest }.keys.sorted().prefix(32)
        revokingScopes = revokingScopes.filter { $0.value > oldest }
        // Stored first, for every controller: an issue of this scope on another one that
        // commits after this sees it when its own commit is applied (and revokes what it
        // issued); one that committed before is in `issued` here once this commit is.
        var marked = StoreWrite()
        try marked.put(
            StoreKey(.revokedScope, scope),
            json: IdentityDocuments.RevokedScope(
                at: now,
                expires: now.addingTimeInterval(Double(maxLifetime.components.seconds))
            )
        )
        _ = try await commit(marked)
        if revocation.scope == .token { _ = try await deleteToken(revocation.value) }
        let records = issued.filter { serial, record in
            guard record.expires > now else { return false }
            switch revocation.scope {
            case .instance: return record.instance == revocation.value
            case .service: return record.service == revocation.value
            case .token: return record.token == revocation.value
            }
        }.sorted { $0.key < $1.key }
        // A certificate's revocation and its credential's deletion land together; a large
        // scope takes several commits (a store commits at most `StoreWrite.maxOperations`).
        var groups: [[StoreWrite.Operation]] = []
        for (serial, record) in records {
            groups.append([
                .put(
                    StoreKey(.revoked, serial),
                    try StoreCoding.encode(IdentityDocuments.Revoked(expires: record.expires))
                ),
                .delete(StoreKey(.credential, record.credential)),
            ])
        }
        // Credentials of the scope issued before certificates were recorded (or whose
        // record is gone) are dropped too.
        for (hash, credential) in credentials.sorted(by: { $0.key < $1.key }) {
            switch revocation.scope {
            case .instance where credential.instance == revocation.value,
                .service where credential.service == revocation.value:
                groups.append([.delete(StoreKey(.credential, hash))])
            default: continue
            }
        }
        for (serial, expires) in revoked.sorted(by: { $0.key < $1.key }) where expires <= now {
            groups.append([.delete(StoreKey(.revoked, serial))])
        }
        for name in stale { groups.append([.delete(StoreKey(.revokedScope, name))]) }
        for write in StoreWrite.split(groups) { _ = try await commit(write) }
        logger.notice(
            "credentials revoked",
            metadata: [
                "\(revocation.scope.rawValue)": "\(revocation.value)",
                "certificates": "\(records.count)",
            ]
        )
        return records.map(\.key)
    }

    /// The serial (hex) of the first certificate in a PEM chain.
    static func leafSerial(_ chainPEM: String) -> String? {
        guard let leaf = try? CertificateAuthority.certificates(fromPEM: chainPEM, field: "certificate").first else {
            return nil
        }
        return hex(leaf.serialNumber.bytes)
    }

    static func hex(_ bytes: some Collection<UInt8>) -> String { Hex.lowercase(bytes) }
}

import Foundation
import GRDB
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

    struct IssuedRecord {
        var serial: String
        var service: String
        var instance: String?
        var token: String?
        var credential: String
        var expires: Date
    }

    func issuedRecord(serial: String) throws -> IssuedRecord? {
        try store.database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM issued WHERE serial = ?", arguments: [serial]).map(Self.record)
        }
    }

    private static func record(_ row: Row) -> IssuedRecord {
        IssuedRecord(
            serial: row["serial"],
            service: row["service"],
            instance: row["instance"],
            token: row["token"],
            credential: row["credential"],
            expires: Date(timeIntervalSince1970: row["expires"])
        )
    }

    /// Revokes what `revocation` names; returns the serials revoked now. The trust bundle
    /// listener pushes the new list.
    func revoke(_ revocation: Revocation, now: Date = Date()) async throws -> [String] {
        // Marked before the first suspension: an issue of this scope that is in flight
        // sees it when it resumes (IdentityService.issue) and is refused.
        revokingScopes["\(revocation.scope.rawValue):\(revocation.value)"] = now
        let oldest = now.addingTimeInterval(-Double(maxLifetime.components.seconds))
        revokingScopes = revokingScopes.filter { $0.value > oldest }
        if revocation.scope == .token { _ = try deleteToken(revocation.value) }
        let column: String
        switch revocation.scope {
        case .instance: column = "instance"
        case .service: column = "service"
        case .token: column = "token"
        }
        let records = try await store.database.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM issued WHERE \(column) = ? AND expires > ?",
                arguments: [revocation.value, now.timeIntervalSince1970]
            ).map(Self.record)
        }
        try await store.database.write { db in
            for record in records {
                try db.execute(
                    sql: "INSERT OR REPLACE INTO revoked (serial, expires) VALUES (?, ?)",
                    arguments: [record.serial, record.expires.timeIntervalSince1970]
                )
                try db.execute(sql: "DELETE FROM credential WHERE hash = ?", arguments: [record.credential])
            }
            try db.execute(sql: "DELETE FROM revoked WHERE expires < ?", arguments: [now.timeIntervalSince1970])
        }
        for record in records {
            revoked[record.serial] = record.expires
            credentials[record.credential] = nil
        }
        // Credentials of the scope issued before this table existed (or whose record is
        // gone) are dropped too.
        switch revocation.scope {
        case .instance: credentials = credentials.filter { $0.value.instance != revocation.value }
        case .service: credentials = credentials.filter { $0.value.service != revocation.value }
        case .token: break
        }
        revoked = revoked.filter { $0.value > now }
        logger.notice(
            "credentials revoked",
            metadata: [
                "\(revocation.scope.rawValue)": "\(revocation.value)",
                "certificates": "\(records.count)",
            ]
        )
        await notifyTrustBundleChange()
        return records.map(\.serial).sorted()
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

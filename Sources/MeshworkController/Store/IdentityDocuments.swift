import Foundation

/// How the CA and the credentials are kept as store documents (`StoreCoding`: JSON, dates
/// as seconds since 1970). Secrets are hashes; the CA key is the one secret in the clear,
/// as it was in the SQLite file (the store is the controller's secret, like etcd's or
/// Consul's data).
enum IdentityDocuments {
    /// The CA that signs, the next one of a rotation, and the roots retiring (by their
    /// fingerprint).
    static let active = StoreKey(.authority, "active")
    static let next = StoreKey(.authority, "next")
    static func retiring(_ fingerprint: String) -> StoreKey { StoreKey(.authority, "retiring-\(fingerprint)") }

    struct Authority: Codable, Hashable {
        var certificates: String
        var key: String
        /// A retiring root stays trusted until then.
        var retireAfter: Date?
    }

    struct JoinToken: Codable, Hashable {
        var secretHash: String
        var service: String
        var expires: Date
        var usesLeft: Int
        var created: Date
    }

    struct Credential: Codable, Hashable {
        var service: String
        var instance: String?
        var expires: Date
    }

    /// A workload certificate issued, by serial: what a revocation finds.
    struct Issued: Codable, Hashable {
        var service: String
        var instance: String?
        var token: String?
        var credential: String
        var expires: Date
    }

    /// A revocation of a whole scope (`revoked-scope/<scope>:<value>`): when it happened,
    /// kept as long as a certificate issued before it could live, so an issue that raced
    /// it on any controller is caught.
    struct RevokedScope: Codable, Hashable {
        var at: Date
        var expires: Date
    }

    struct Revoked: Codable, Hashable {
        var expires: Date
    }

    struct OperatorToken: Codable, Hashable {
        var secretHash: String
        var scope: String
        var expires: Date
        var created: Date
    }
}

import Foundation
import GRDB
import Logging

/// What an operator token may do: `read` the registry (when reads are protected), or also
/// `write` it (services, instances, policies, join tokens, CA rotation).
enum OperatorScope: String, Sendable, Hashable, CaseIterable {
    case read
    case write
}

struct OperatorToken: Sendable {
    var id: String
    var secretHash: String
    var scope: OperatorScope
    var expires: Date
    var created: Date
}

extension IdentityService {
    struct CreatedOperatorToken: Encodable {
        let id: String
        let token: String
        let kind = "operator"
        let scope: String
        let expires: Date
    }

    /// A token for people and automation, with a scope and a lifetime; only its SHA-256 is kept.
    func createOperatorToken(scope: OperatorScope, ttl: Duration) throws -> CreatedOperatorToken {
        let (id, secret, secretHash) = Self.newTokenSecret()
        let now = Date()
        let token = OperatorToken(
            id: id,
            secretHash: secretHash,
            scope: scope,
            expires: now.addingTimeInterval(Double(ttl.components.seconds)),
            created: now
        )
        try store.database.write { db in
            try db.execute(
                sql: "INSERT INTO operator_token (id, secret_hash, scope, expires, created) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    id, token.secretHash, scope.rawValue, token.expires.timeIntervalSince1970,
                    now.timeIntervalSince1970,
                ]
            )
        }
        operatorTokens[id] = token
        logger.info("operator token created", metadata: ["id": "\(id)", "scope": "\(scope.rawValue)"])
        return CreatedOperatorToken(id: id, token: "\(id).\(secret)", scope: scope.rawValue, expires: token.expires)
    }

    /// The scope of an operator token, if `bearer` is one and has not expired.
    func operatorScope(_ bearer: String) -> OperatorScope? {
        guard let parts = Self.splitToken(bearer), let token = operatorTokens[parts.id], token.expires > Date(),
            ControllerAPI.constantTimeEqual(Self.hash(parts.secret), token.secretHash)
        else { return nil }
        return token.scope
    }
}

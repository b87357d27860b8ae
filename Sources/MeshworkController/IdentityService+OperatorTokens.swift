import Foundation
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
    func createOperatorToken(scope: OperatorScope, ttl: Duration) async throws -> CreatedOperatorToken {
        let (id, secret, secretHash) = Self.newTokenSecret()
        let now = Date()
        let token = OperatorToken(
            id: id,
            secretHash: secretHash,
            scope: scope,
            expires: now.addingTimeInterval(Double(ttl.components.seconds)),
            created: now
        )
        var write = StoreWrite(conditions: [.absent(StoreKey(.operatorToken, id))])
        try write.put(
            StoreKey(.operatorToken, id),
            json: IdentityDocuments.OperatorToken(
                secretHash: token.secretHash,
                scope: scope.rawValue,
                expires: token.expires,
                created: token.created
            )
        )
        _ = try await commit(write)
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

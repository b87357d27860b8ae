import Crypto
import Foundation
import GRDB
import HTTPTypes
import Logging
import MeshworkIdentity
import MeshworkModel
import SwiftASN1
import X509

/// The controller's certificate authority and the credentials it hands out:
///
/// - **join tokens**, scoped to one service, with a lifetime and a number of uses, that a
///   new sidecar trades (with a CSR) for its first certificate;
/// - **workload certificates** (X.509-SVIDs) for CSRs authenticated by a join token or, at
///   renewal, by the current certificate and a signature of its key;
/// - **sidecar credentials**, bearer tokens issued with each certificate that may write
///   only the workload's own instance.
///
/// Secrets are kept as SHA-256 hashes; the CA key lives in the store (the data directory is
/// the controller's secret, like Consul's raft or etcd's data dir).
actor IdentityService {
    let trustDomain: String
    private(set) var authority: CertificateAuthority
    /// The roots sidecars trust (the active one, and a retiring one during a rotation).
    private(set) var roots: [Certificate]
    let maxLifetime: Duration
    private let store: RegistryStore
    private let logger: Logger
    private let metrics: ControllerMetrics
    private var tokens: [String: JoinToken] = [:]
    private var credentials: [String: Credential] = [:]

    struct JoinToken: Sendable {
        var id: String
        var secretHash: String
        var service: String
        var expires: Date
        var usesLeft: Int
        var created: Date
    }

    struct Credential: Sendable, Hashable {
        var service: String
        var instance: String?
        var expires: Date
    }

    /// Opens the CA: the operator's (`supplied`, PEM texts) when given, else the one in the
    /// store, else a new root created and stored now.
    init(
        store: RegistryStore,
        trustDomain: String,
        supplied: (certificates: String, key: String)?,
        maxLifetime: Duration,
        metrics: ControllerMetrics,
        logger: Logger
    ) throws {
        self.store = store
        self.trustDomain = trustDomain
        self.maxLifetime = maxLifetime
        self.metrics = metrics
        self.logger = logger
        let stored = try store.database.read { db in
            try Row.fetchAll(db, sql: "SELECT certificates, key, state FROM authority ORDER BY id")
        }
        let authority: CertificateAuthority
        if let supplied {
            authority = try CertificateAuthority(
                certificatePEM: supplied.certificates,
                keyPEM: supplied.key,
                trustDomain: trustDomain
            )
        } else if let active = stored.last(where: { $0["state"] == "active" }) {
            authority = try CertificateAuthority(
                certificatePEM: active["certificates"],
                keyPEM: active["key"],
                trustDomain: trustDomain
            )
        } else {
            authority = try CertificateAuthority.generateRoot(trustDomain: trustDomain)
            let pem = try authority.pem()
            try store.database.write { db in
                try db.execute(
                    sql: "INSERT INTO authority (certificates, key, state) VALUES (?, ?, 'active')",
                    arguments: [pem.certificates, pem.key]
                )
            }
            logger.info("created the mesh CA", metadata: ["trust-domain": "\(trustDomain)"])
        }
        self.authority = authority
        var roots = [authority.root]
        for row in stored where row["state"] == "retiring" {
            let text: String = row["certificates"]
            if let root = try? CertificateAuthority.certificates(fromPEM: text, field: "ca").last,
                root != authority.root
            {
                roots.append(root)
            }
        }
        self.roots = roots
        let now = Date()
        let (tokens, credentials) = try store.database.read { db in
            var tokens: [String: JoinToken] = [:]
            var credentials: [String: Credential] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM join_token") {
                let token = JoinToken(
                    id: row["id"],
                    secretHash: row["secret_hash"],
                    service: row["service"],
                    expires: Date(timeIntervalSince1970: row["expires"]),
                    usesLeft: row["uses_left"],
                    created: Date(timeIntervalSince1970: row["created"])
                )
                tokens[token.id] = token
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM credential") {
                let expires = Date(timeIntervalSince1970: row["expires"])
                guard expires > now else { continue }
                credentials[row["hash"]] = Credential(
                    service: row["service"],
                    instance: row["instance"],
                    expires: expires
                )
            }
            return (tokens, credentials)
        }
        self.tokens = tokens
        self.credentials = credentials
    }

    var trustBundlePEM: String {
        (try? CertificateAuthority.pem(roots)) ?? ""
    }

    // MARK: join tokens

    struct CreatedToken: Encodable {
        let id: String
        let token: String
        let service: String
        let expires: Date
        let uses: Int
    }

    struct TokenInfo: Encodable {
        let id: String
        let service: String
        let expires: Date
        let usesLeft: Int
        let created: Date
    }

    func createJoinToken(service: String, ttl: Duration, uses: Int) throws -> CreatedToken {
        let id = Self.randomHex(bytes: 6)
        let secret = Self.randomHex(bytes: 20)
        let now = Date()
        let token = JoinToken(
            id: id,
            secretHash: Self.hash(secret),
            service: service,
            expires: now.addingTimeInterval(Double(ttl.components.seconds)),
            usesLeft: uses,
            created: now
        )
        try store.database.write { db in
            try db.execute(
                sql:
                    "INSERT INTO join_token (id, secret_hash, service, expires, uses_left, created) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    id, token.secretHash, service, token.expires.timeIntervalSince1970, uses,
                    now.timeIntervalSince1970,
                ]
            )
        }
        tokens[id] = token
        logger.info("join token created", metadata: ["id": "\(id)", "service": "\(service)", "uses": "\(uses)"])
        return CreatedToken(id: id, token: "\(id).\(secret)", service: service, expires: token.expires, uses: uses)
    }

    func listTokens() -> [TokenInfo] {
        tokens.values.sorted { $0.created < $1.created }.map {
            TokenInfo(id: $0.id, service: $0.service, expires: $0.expires, usesLeft: $0.usesLeft, created: $0.created)
        }
    }

    func deleteToken(_ id: String) throws -> Bool {
        guard tokens.removeValue(forKey: id) != nil else { return false }
        try store.database.write { db in
            try db.execute(sql: "DELETE FROM join_token WHERE id = ?", arguments: [id])
        }
        return true
    }

    /// Spends one use of a join token; the service it is for, or why it is refused.
    private func redeem(_ text: String, now: Date) throws -> String {
        let parts = text.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, var token = tokens[parts[0]],
            ControllerAPI.constantTimeEqual(Self.hash(parts[1]), token.secretHash)
        else {
            metrics.refused("join_token_invalid")
            throw APIError(status: .unauthorized, message: "join token not recognised")
        }
        guard token.expires > now else {
            metrics.refused("join_token_expired")
            throw APIError(
                status: .unauthorized,
                message: "join token \(token.id) expired at \(ISO8601DateFormatter().string(from: token.expires))"
            )
        }
        guard token.usesLeft > 0 else {
            metrics.refused("join_token_used")
            throw APIError(status: .unauthorized, message: "join token \(token.id) has no uses left")
        }
        token.usesLeft -= 1
        tokens[token.id] = token
        try store.database.write { db in
            try db.execute(
                sql: "UPDATE join_token SET uses_left = ? WHERE id = ?",
                arguments: [token.usesLeft, token.id]
            )
        }
        return token.service
    }

    // MARK: certificates

    struct CertificateRequest: Sendable {
        var csr: String
        var token: String?
        var certificate: String?
        var proof: String?
        var ttl: Duration?
        var instance: String?
    }

    /// Signs a workload certificate. A join token names the service; a renewal proves the
    /// current certificate's identity. Either way a new sidecar credential comes with it.
    func issue(_ request: CertificateRequest) async throws -> IssuedCertificate {
        let now = Date()
        let id: SPIFFEID
        let via: String
        if let token = request.token {
            id = .service(try redeem(token, now: now), trustDomain: trustDomain)
            via = "join_token"
        } else if let certificate = request.certificate, let proof = request.proof {
            do {
                id = try await CertificateIdentity.verifyRenewal(
                    chainPEM: certificate,
                    csrPEM: request.csr,
                    proof: proof,
                    roots: roots,
                    now: now
                )
            } catch {
                metrics.refused("renewal_invalid")
                throw APIError(status: .unauthorized, message: "renewal refused", errors: [error.configError])
            }
            guard id.trustDomain == trustDomain, id.serviceName != nil else {
                metrics.refused("renewal_invalid")
                throw APIError(status: .forbidden, message: "\(id) is not a service identity of \(trustDomain)")
            }
            via = "renewal"
        } else {
            metrics.refused("unauthenticated")
            throw APIError(
                status: .unauthorized,
                message: "a certificate request needs a join token, or the current certificate and a proof"
            )
        }
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: request.csr)
        } catch {
            metrics.refused("csr_invalid")
            throw APIError(
                status: .badRequest,
                message: "invalid certificate request",
                errors: [ConfigError(path: "csr", reason: "not a PEM certificate signing request")]
            )
        }
        let lifetime = min(request.ttl ?? maxLifetime, maxLifetime)
        let chain: [Certificate]
        do {
            chain = try authority.issue(csr: csr, for: id, lifetime: lifetime, now: now)
        } catch {
            metrics.refused("csr_invalid")
            throw APIError(status: .badRequest, message: "invalid certificate request", errors: [error.configError])
        }
        let credential = Self.randomHex(bytes: 32)
        let record = Credential(
            service: id.serviceName ?? "",
            instance: request.instance,
            expires: chain[0].notValidAfter
        )
        credentials[Self.hash(credential)] = record
        try await store.database.write { db in
            try db.execute(sql: "DELETE FROM credential WHERE expires < ?", arguments: [now.timeIntervalSince1970])
            try db.execute(
                sql: "INSERT INTO credential (hash, service, instance, expires) VALUES (?, ?, ?, ?)",
                arguments: [
                    Self.hash(credential), record.service, record.instance, record.expires.timeIntervalSince1970,
                ]
            )
        }
        credentials = credentials.filter { $0.value.expires > now }
        metrics.issued(via: via)
        logger.info(
            "certificate issued",
            metadata: ["identity": "\(id)", "via": "\(via)", "not-after": "\(chain[0].notValidAfter)"]
        )
        return IssuedCertificate(
            certificate: try CertificateAuthority.pem(chain),
            trustBundle: trustBundlePEM,
            spiffeID: id.description,
            notBefore: chain[0].notValidBefore,
            notAfter: chain[0].notValidAfter,
            issuedAt: now,
            credential: credential
        )
    }

    /// The sidecar credential behind a bearer token, if it is one and has not expired.
    func credential(_ bearer: String) -> Credential? {
        guard let credential = credentials[Self.hash(bearer)], credential.expires > Date() else { return nil }
        return credential
    }

    // MARK: helpers

    static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}

extension IdentityError {
    var configError: ConfigError { ConfigError(path: field, reason: reason) }
}

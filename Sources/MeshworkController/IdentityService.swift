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
    /// The CA that signs: the active one.
    private(set) var authority: CertificateAuthority
    /// A rotation's new CA, trusted everywhere but not signing yet.
    private var next: CertificateAuthority?
    /// Roots replaced by a rotation, still trusted while certificates they signed may be
    /// valid (until `after`).
    private var retiring: [(root: Certificate, after: Date)] = []
    /// Told of every trust bundle change, to push it down the watch streams.
    private var onTrustBundleChange: (@Sendable (TrustBundle) async -> Void)?
    let maxLifetime: Duration
    let store: RegistryStore
    let logger: Logger
    private let metrics: ControllerMetrics
    private var tokens: [String: JoinToken] = [:]
    var credentials: [String: Credential] = [:]
    /// Revoked workload certificates (serial, hex) until they expire: pushed with the trust
    /// bundle, refused by peers at the handshake and for renewal.
    var revoked: [String: Date] = [:]
    /// When each scope (`instance:ID`, `service:NAME`, `token:ID`) was last revoked, so an
    /// issue that raced a revocation is caught (kept for the longest lifetime).
    var revokingScopes: [String: Date] = [:]
    /// Operator API tokens with a scope, by id.
    var operatorTokens: [String: OperatorToken] = [:]

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
            try Row.fetchAll(db, sql: "SELECT certificates, key, state, retire_after FROM authority ORDER BY id")
        }
        func load(_ row: Row) throws -> CertificateAuthority {
            try CertificateAuthority(certificatePEM: row["certificates"], keyPEM: row["key"], trustDomain: trustDomain)
        }
        var authority = try stored.last(where: { $0["state"] == "active" }).map(load)
        if let supplied {
            let given = try CertificateAuthority(
                certificatePEM: supplied.certificates,
                keyPEM: supplied.key,
                trustDomain: trustDomain
            )
            if let authority, authority.certificate != given.certificate {
                throw ControllerError(
                    "--ca-cert is not the CA in the store (it was rotated?): start with the stored CA's files, or without --ca-cert/--ca-key"
                )
            }
            if authority == nil {
                try Self.insert(given, state: "active", into: store)
                authority = given
                logger.info("stored the operator's CA", metadata: ["trust-domain": "\(trustDomain)"])
            }
        }
        if authority == nil {
            let created = try CertificateAuthority.generateRoot(trustDomain: trustDomain)
            try Self.insert(created, state: "active", into: store)
            authority = created
            logger.info("created the mesh CA", metadata: ["trust-domain": "\(trustDomain)"])
        }
        self.authority = authority!
        self.next = try stored.last(where: { $0["state"] == "next" }).map(load)
        for row in stored where row["state"] == "retiring" {
            let text: String = row["certificates"]
            if let root = try? CertificateAuthority.certificates(fromPEM: text, field: "ca").last {
                let after: Double = row["retire_after"] ?? 0
                retiring.append((root, Date(timeIntervalSince1970: after)))
            }
        }
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
        self.revoked = try store.database.read { db in
            var revoked: [String: Date] = [:]
            /// When each scope (`instance:ID`, `service:NAME`, `token:ID`) was last revoked, so an
            /// issue that raced a revocation is caught (kept for the longest lifetime).
            var revokingScopes: [String: Date] = [:]
            for row in try Row.fetchAll(
                db,
                sql: "SELECT * FROM revoked WHERE expires > ?",
                arguments: [now.timeIntervalSince1970]
            ) {
                revoked[row["serial"]] = Date(timeIntervalSince1970: row["expires"])
            }
            return revoked
        }
        self.operatorTokens = try store.database.read { db in
            var result: [String: OperatorToken] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM operator_token") {
                let token = OperatorToken(
                    id: row["id"],
                    secretHash: row["secret_hash"],
                    scope: OperatorScope(rawValue: row["scope"]) ?? .read,
                    expires: Date(timeIntervalSince1970: row["expires"]),
                    created: Date(timeIntervalSince1970: row["created"])
                )
                result[token.id] = token
            }
            return result
        }
    }

    /// The roots sidecars trust, active first: during a rotation, the next or the retiring
    /// one as well.
    var roots: [Certificate] {
        var roots = [authority.root]
        for root in [next?.root].compactMap({ $0 }) + retiring.map(\.root) where !roots.contains(root) {
            roots.append(root)
        }
        return roots
    }

    var trustBundle: TrustBundle {
        let now = Date()
        return TrustBundle(
            pem: (try? CertificateAuthority.pem(roots)) ?? "",
            activeRoot: CertificateAuthority.fingerprint(authority.root),
            revoked: revoked.filter { $0.value > now }.keys.sorted()
        )
    }

    var trustBundlePEM: String { trustBundle.pem }

    /// Pushes the current trust bundle (roots and revoked serials) to its listener.
    func notifyTrustBundleChange() async {
        await onTrustBundleChange?(trustBundle)
    }

    func setTrustBundleListener(_ listener: @escaping @Sendable (TrustBundle) async -> Void) {
        onTrustBundleChange = listener
    }

    private static func insert(_ authority: CertificateAuthority, state: String, into store: RegistryStore) throws {
        let pem = try authority.pem()
        try store.database.write { db in
            try db.execute(
                sql: "INSERT INTO authority (certificates, key, state) VALUES (?, ?, ?)",
                arguments: [pem.certificates, pem.key, state]
            )
        }
    }

    // MARK: rotation

    /// Where a CA rotation stands, for `GET /v1/ca`.
    struct AuthorityStatus: Encodable {
        struct Root: Encodable {
            let subject: String
            let fingerprint: String
            let notAfter: Date
            var retireAfter: Date?
        }
        let trustDomain: String
        let active: Root
        let next: Root?
        let retiring: [Root]
    }

    var status: AuthorityStatus {
        func describe(_ root: Certificate) -> AuthorityStatus.Root {
            .init(
                subject: "\(root.subject)",
                fingerprint: CertificateAuthority.fingerprint(root),
                notAfter: root.notValidAfter
            )
        }
        return AuthorityStatus(
            trustDomain: trustDomain,
            active: describe(authority.root),
            next: next.map { describe($0.root) },
            retiring: retiring.map {
                var root = describe($0.root)
                root.retireAfter = $0.after
                return root
            }
        )
    }

    /// Step 1 of a rotation: a new root (generated, or the operator's) joins the trust
    /// bundle everywhere; the old one still signs.
    func prepareRotation(supplied: (certificates: String, key: String)?) async throws {
        guard next == nil else {
            throw APIError(status: .conflict, message: "a rotation is already prepared: activate it (ctl ca activate)")
        }
        guard retiring.isEmpty else {
            throw APIError(status: .conflict, message: "the previous rotation is not finished (ctl ca finish)")
        }
        let created: CertificateAuthority
        if let supplied {
            do {
                created = try CertificateAuthority(
                    certificatePEM: supplied.certificates,
                    keyPEM: supplied.key,
                    trustDomain: trustDomain
                )
            } catch {
                throw APIError(status: .badRequest, message: "invalid CA", errors: [error.configError])
            }
        } else {
            created = try CertificateAuthority.generateRoot(trustDomain: trustDomain)
        }
        try Self.insert(created, state: "next", into: store)
        next = created
        logger.notice("CA rotation prepared: the new root is trusted, the old one still signs")
        await onTrustBundleChange?(trustBundle)
    }

    /// Step 2: the new CA signs; the old root stays trusted until every certificate it
    /// signed has expired (at most `maxLifetime` from now). Sidecars renew at once.
    func activateRotation() async throws {
        guard let next else {
            throw APIError(status: .conflict, message: "no rotation prepared (ctl ca rotate)")
        }
        let after = Date().addingTimeInterval(Double(maxLifetime.components.seconds))
        let old = CertificateAuthority.fingerprint(authority.root)
        try await store.database.write { db in
            try db.execute(
                sql: "UPDATE authority SET state = 'retiring', retire_after = ? WHERE state = 'active'",
                arguments: [after.timeIntervalSince1970]
            )
            try db.execute(sql: "UPDATE authority SET state = 'active' WHERE state = 'next'")
        }
        retiring.append((authority.root, after))
        authority = next
        self.next = nil
        logger.notice("CA rotation activated: the new root signs", metadata: ["retiring": "\(old)"])
        await onTrustBundleChange?(trustBundle)
    }

    /// Step 3: the old root leaves the trust bundle; refused while certificates it signed
    /// may still be valid, unless forced.
    func finishRotation(force: Bool) async throws {
        guard !retiring.isEmpty else {
            throw APIError(status: .conflict, message: "no retiring root (no rotation activated)")
        }
        let now = Date()
        if !force, let latest = retiring.map(\.after).max(), latest > now {
            throw APIError(
                status: .conflict,
                message:
                    "certificates from the old root may be valid until \(ISO8601DateFormatter().string(from: latest)); finish then, or force"
            )
        }
        try await store.database.write { db in
            try db.execute(sql: "DELETE FROM authority WHERE state = 'retiring'")
        }
        retiring.removeAll()
        logger.notice("CA rotation finished: only the new root is trusted")
        await onTrustBundleChange?(trustBundle)
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
        /// `join` (for one service's sidecars) or `operator`.
        var kind = "join"
        var service: String?
        var scope: String?
        let expires: Date
        var usesLeft: Int?
        let created: Date
    }

    func createJoinToken(service: String, ttl: Duration, uses: Int) throws -> CreatedToken {
        let (id, secret, secretHash) = Self.newTokenSecret()
        let now = Date()
        let token = JoinToken(
            id: id,
            secretHash: secretHash,
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
        // The active root's SHA-256 rides along: a sidecar verifies an https:// controller
        // with it before trusting anything the controller says (no CA file to hand out).
        let pin = CertificateAuthority.fingerprint(authority.root)
        return CreatedToken(
            id: id,
            token: "\(id).\(secret).\(pin)",
            service: service,
            expires: token.expires,
            uses: uses
        )
    }

    func listTokens() -> [TokenInfo] {
        let join = tokens.values.map {
            TokenInfo(id: $0.id, service: $0.service, expires: $0.expires, usesLeft: $0.usesLeft, created: $0.created)
        }
        let operators = operatorTokens.values.map {
            TokenInfo(id: $0.id, kind: "operator", scope: $0.scope.rawValue, expires: $0.expires, created: $0.created)
        }
        return (join + operators).sorted { $0.created < $1.created }
    }

    func deleteToken(_ id: String) throws -> Bool {
        if operatorTokens.removeValue(forKey: id) != nil {
            try store.database.write { db in
                try db.execute(sql: "DELETE FROM operator_token WHERE id = ?", arguments: [id])
            }
            return true
        }
        guard tokens.removeValue(forKey: id) != nil else { return false }
        try store.database.write { db in
            try db.execute(sql: "DELETE FROM join_token WHERE id = ?", arguments: [id])
        }
        return true
    }

    /// Spends one use of a join token; the service it is for, or why it is refused.
    private func redeem(_ text: String, now: Date) throws -> (service: String, token: String) {
        guard let parts = Self.splitToken(text), var token = tokens[parts.id],
            ControllerAPI.constantTimeEqual(Self.hash(parts.secret), token.secretHash)
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
        return (token.service, token.id)
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
        // What the new certificate is issued under: the join token it descends from and
        // the instance, carried over renewals, so a revocation finds every certificate.
        var lineage: (token: String?, instance: String?) = (nil, request.instance)
        if let token = request.token {
            let redeemed = try redeem(token, now: now)
            id = .service(redeemed.service, trustDomain: trustDomain)
            lineage.token = redeemed.token
            via = "join_token"
        } else if let certificate = request.certificate, let proof = request.proof {
            if let serial = Self.leafSerial(certificate), revoked[serial].map({ $0 > now }) == true {
                metrics.refused("renewal_invalid")
                throw APIError(
                    status: .forbidden,
                    message: "certificate \(serial) is revoked: join again with a new token"
                )
            }
            if let serial = Self.leafSerial(certificate), let parent = try issuedRecord(serial: serial) {
                // The parent's instance, whatever the request says: a renewal cannot move its
                // certificate out of an instance's revocation.
                lineage = (parent.token, parent.instance ?? request.instance)
            }
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
            instance: lineage.instance,
            expires: chain[0].notValidAfter
        )
        credentials[Self.hash(credential)] = record
        let serial = Self.hex(chain[0].serialNumber.bytes)
        let issuedUnder = lineage
        try await store.database.write { db in
            try db.execute(sql: "DELETE FROM credential WHERE expires < ?", arguments: [now.timeIntervalSince1970])
            try db.execute(
                sql: "INSERT INTO credential (hash, service, instance, expires) VALUES (?, ?, ?, ?)",
                arguments: [
                    Self.hash(credential), record.service, record.instance, record.expires.timeIntervalSince1970,
                ]
            )
            try db.execute(sql: "DELETE FROM issued WHERE expires < ?", arguments: [now.timeIntervalSince1970])
            try db.execute(
                sql:
                    "INSERT OR REPLACE INTO issued (serial, service, instance, token, credential, expires) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [
                    serial, record.service, issuedUnder.instance, issuedUnder.token, Self.hash(credential),
                    record.expires.timeIntervalSince1970,
                ]
            )
        }
        credentials = credentials.filter { $0.value.expires > now }
        // A revocation of this lineage that began while this request was suspended did not
        // see the certificate: refuse it now rather than hand out a revoked identity.
        let scopes = [
            "service:\(record.service)", lineage.instance.map { "instance:\($0)" }, lineage.token.map { "token:\($0)" },
        ].compactMap { $0 }
        if scopes.contains(where: { revokingScopes[$0].map { $0 >= now } ?? false }) {
            revoked[serial] = record.expires
            credentials[Self.hash(credential)] = nil
            try await store.database.write { db in
                try db.execute(
                    sql: "INSERT OR REPLACE INTO revoked (serial, expires) VALUES (?, ?)",
                    arguments: [serial, record.expires.timeIntervalSince1970]
                )
                try db.execute(sql: "DELETE FROM credential WHERE hash = ?", arguments: [Self.hash(credential)])
            }
            metrics.refused("forbidden")
            throw APIError(status: .forbidden, message: "revoked while being issued: join again with a new token")
        }
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
            credential: credential,
            root: CertificateAuthority.fingerprint(authority.root)
        )
    }

    /// Per instance, when its newest workload certificate expires (from the credentials
    /// issued with each certificate): what the dashboard shows beside each instance.
    func certificateExpiries(now: Date = Date()) -> [CertificateExpiry] {
        var newest: [String: Credential] = [:]
        for credential in credentials.values where credential.expires > now {
            guard let instance = credential.instance else { continue }
            if let known = newest[instance], known.expires >= credential.expires { continue }
            newest[instance] = credential
        }
        return newest.keys.sorted().map {
            CertificateExpiry(instance: $0, service: newest[$0]!.service, notAfter: newest[$0]!.expires)
        }
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

    /// A new token: a public id (to find it), a secret, and the secret's hash (what is kept).
    /// The token handed out is `<id>.<secret>`.
    static func newTokenSecret() -> (id: String, secret: String, hash: String) {
        let secret = randomHex(bytes: 20)
        return (randomHex(bytes: 6), secret, hash(secret))
    }

    /// `<id>.<secret>` (or a join token's `<id>.<secret>.<ca-pin>`) split, or nil; the pin
    /// is for the sidecar, the controller has no use for it.
    static func splitToken(_ text: String) -> (id: String, secret: String)? {
        let parts = text.split(separator: ".", maxSplits: 2).map(String.init)
        return parts.count == 2 || parts.count == 3 ? (parts[0], parts[1]) : nil
    }

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}

/// When an instance's current workload certificate expires.
struct CertificateExpiry: Sendable, Hashable, Encodable {
    var instance: String
    var service: String
    var notAfter: Date
}

/// The roots to trust (PEM, active first) and which one signs new certificates.
struct TrustBundle: Sendable, Hashable {
    let pem: String
    let activeRoot: String
    /// Serials (hex) of revoked workload certificates that have not expired yet.
    var revoked: [String] = []
}

extension IdentityError {
    var configError: ConfigError { ConfigError(path: field, reason: reason) }
}

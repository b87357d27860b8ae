import Crypto
import Foundation
import GRDB
import HTTPTypes
import Logging
import MeshworkIdentity
import MeshworkModel
import ServiceLifecycle
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
    let store: any ControllerStore
    let logger: Logger
    /// The store revision applied here, and who waits for a later one (as `Controller`:
    /// every change, this controller's own too, comes through `follow`).
    private(set) var appliedRevision: Int64
    private var revisionWaiters = RevisionWaiters()
    /// The task reading the store's change stream now (cancelled to open it again).
    private var following: Task<Void, any Error>?
    /// The authority documents (`active`, `next`, `retiring-…`), as stored.
    private var authorityDocuments: [String: IdentityDocuments.Authority] = [:]
    /// Each join token's document revision: a redemption is conditional on it, so two
    /// controllers cannot both spend a token's last use.
    private var tokenRevisions: [String: Int64] = [:]
    /// Workload certificates issued and not expired, by serial (what a revocation finds).
    var issued: [String: IdentityDocuments.Issued] = [:]
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

    static func document(_ token: JoinToken) -> IdentityDocuments.JoinToken {
        IdentityDocuments.JoinToken(
            secretHash: token.secretHash,
            service: token.service,
            expires: token.expires,
            usesLeft: token.usesLeft,
            created: token.created
        )
    }

    /// Opens the CA: the operator's (`supplied`, PEM texts) when given, else the one in the
    /// store, else a new root created and stored now (by one controller only: the others
    /// find it there).
    static func open(
        store: any ControllerStore,
        snapshot: StoreSnapshot,
        trustDomain: String,
        supplied: (certificates: String, key: String)?,
        maxLifetime: Duration,
        metrics: ControllerMetrics,
        logger: Logger
    ) async throws -> IdentityService {
        var snapshot = snapshot
        let stored = try snapshot.documents.first { $0.key == IdentityDocuments.active }.map {
            try StoreCoding.decode(IdentityDocuments.Authority.self, $0.body, key: $0.key)
        }
        if let stored, let supplied {
            let given = try CertificateAuthority(
                certificatePEM: supplied.certificates,
                keyPEM: supplied.key,
                trustDomain: trustDomain
            )
            let current = try CertificateAuthority(
                certificatePEM: stored.certificates,
                keyPEM: stored.key,
                trustDomain: trustDomain
            )
            if current.certificate != given.certificate {
                throw ControllerError(
                    "--ca-cert is not the CA in the store (it was rotated?): start with the stored CA's files, or without --ca-cert/--ca-key"
                )
            }
        }
        if stored == nil {
            let created: CertificateAuthority
            if let supplied {
                created = try CertificateAuthority(
                    certificatePEM: supplied.certificates,
                    keyPEM: supplied.key,
                    trustDomain: trustDomain
                )
            } else {
                created = try CertificateAuthority.generateRoot(trustDomain: trustDomain)
            }
            let pem = try created.pem()
            var write = StoreWrite(conditions: [.absent(IdentityDocuments.active)])
            try write.put(
                IdentityDocuments.active,
                json: IdentityDocuments.Authority(certificates: pem.certificates, key: pem.key)
            )
            do {
                _ = try await store.commit(write)
                logger.info(
                    supplied == nil ? "created the mesh CA" : "stored the operator's CA",
                    metadata: ["trust-domain": "\(trustDomain)"]
                )
            } catch let error as StoreError where error.code == .conflict {
                // Another controller stored one first: that is the mesh's CA.
            }
            snapshot = try await store.load()
        }
        return try IdentityService(
            store: store,
            snapshot: snapshot,
            trustDomain: trustDomain,
            maxLifetime: maxLifetime,
            metrics: metrics,
            logger: logger
        )
    }

    private init(
        store: any ControllerStore,
        snapshot: StoreSnapshot,
        trustDomain: String,
        maxLifetime: Duration,
        metrics: ControllerMetrics,
        logger: Logger
    ) throws {
        self.store = store
        self.trustDomain = trustDomain
        self.maxLifetime = maxLifetime
        self.metrics = metrics
        self.logger = logger
        self.appliedRevision = snapshot.revision
        let now = Date()
        for document in snapshot.documents {
            let key = document.key
            switch key.collection {
            case .authority:
                authorityDocuments[key.name] = try StoreCoding.decode(
                    IdentityDocuments.Authority.self,
                    document.body,
                    key: key
                )
            case .joinToken:
                let token = try StoreCoding.decode(IdentityDocuments.JoinToken.self, document.body, key: key)
                tokens[key.name] = JoinToken(stored: token, id: key.name)
                tokenRevisions[key.name] = document.revision
            case .credential:
                let credential = try StoreCoding.decode(IdentityDocuments.Credential.self, document.body, key: key)
                guard credential.expires > now else { continue }
                credentials[key.name] = Credential(
                    service: credential.service,
                    instance: credential.instance,
                    expires: credential.expires
                )
            case .issued:
                issued[key.name] = try StoreCoding.decode(IdentityDocuments.Issued.self, document.body, key: key)
            case .revoked:
                let record = try StoreCoding.decode(IdentityDocuments.Revoked.self, document.body, key: key)
                if record.expires > now { revoked[key.name] = record.expires }
            case .revokedScope:
                let record = try StoreCoding.decode(IdentityDocuments.RevokedScope.self, document.body, key: key)
                if record.expires > now { revokingScopes[key.name] = record.at }
            case .operatorToken:
                let token = try StoreCoding.decode(IdentityDocuments.OperatorToken.self, document.body, key: key)
                operatorTokens[key.name] = OperatorToken(stored: token, id: key.name)
            default: continue
            }
        }
        guard let active = authorityDocuments["active"] else {
            throw ControllerError("the store holds no CA (authority/active)")
        }
        self.authority = try CertificateAuthority(
            certificatePEM: active.certificates,
            keyPEM: active.key,
            trustDomain: trustDomain
        )
        (self.next, self.retiring) = try Self.rotation(authorityDocuments, trustDomain: trustDomain)
    }

    /// `authority`, `next` and `retiring` from the authority documents.
    private func loadAuthorities() throws {
        if let active = authorityDocuments["active"] {
            authority = try CertificateAuthority(
                certificatePEM: active.certificates,
                keyPEM: active.key,
                trustDomain: trustDomain
            )
        }
        (next, retiring) = try Self.rotation(authorityDocuments, trustDomain: trustDomain)
    }

    /// A rotation's next CA and the retiring roots, from the authority documents.
    private static func rotation(
        _ documents: [String: IdentityDocuments.Authority],
        trustDomain: String
    ) throws -> (CertificateAuthority?, [(root: Certificate, after: Date)]) {
        let next = try documents["next"].map {
            try CertificateAuthority(certificatePEM: $0.certificates, keyPEM: $0.key, trustDomain: trustDomain)
        }
        let retiring = documents.filter { $0.key.hasPrefix("retiring-") }.sorted { $0.key < $1.key }.compactMap {
            entry -> (root: Certificate, after: Date)? in
            guard let root = try? CertificateAuthority.certificates(fromPEM: entry.value.certificates, field: "ca").last
            else { return nil }
            return (root, entry.value.retireAfter ?? Date(timeIntervalSince1970: 0))
        }
        return (next, retiring)
    }

    // MARK: following the store

    /// Applies the store's identity changes as they come (see `Controller.follow`); a
    /// change of the roots or of the revoked serials goes to the trust bundle listener.
    func follow() async {
        defer { revisionWaiters.releaseAll() }
        while !Task.isCancelled {
            do {
                let stream = store.changes(after: appliedRevision)
                let current = Task {
                    for try await batch in stream {
                        if await self.apply(batch) { await self.trustBundleChanged() }
                    }
                }
                following = current
                try await withTaskCancellationHandler {
                    try await current.value
                } onCancel: {
                    current.cancel()
                }
            } catch is CancellationError {
                // This task's own cancellation, or `appliedTimedOut` restarting the stream.
                if Task.isCancelled { return }
            } catch let error as StoreError where error.code == .compacted {
                do {
                    let snapshot = try await store.load()
                    logger.warning("the store's history moved past this controller: identity read again")
                    try reload(snapshot)
                    await onTrustBundleChange?(trustBundle)
                } catch {
                    logger.error("cannot read the store", metadata: ["error": "\(error)"])
                }
            } catch {
                // (Shutting down: the store closed under the stream.)
                if Task.isCancelled || Task.isShuttingDownGracefully { return }
                logger.warning("the store's change stream broke: following it again", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    private func reload(_ snapshot: StoreSnapshot) throws {
        tokens.removeAll()
        tokenRevisions.removeAll()
        credentials.removeAll()
        issued.removeAll()
        revoked.removeAll()
        operatorTokens.removeAll()
        authorityDocuments.removeAll()
        let changes = snapshot.documents.map { StoreChange(key: $0.key, body: $0.body) }
        appliedRevision = snapshot.revision - 1
        _ = apply(StoreChanges(revision: snapshot.revision, changes: changes))
        // A redemption is conditional on the token document's own revision, not the
        // snapshot's (which would refuse every redemption as a conflict).
        for document in snapshot.documents where document.key.collection == .joinToken {
            tokenRevisions[document.key.name] = document.revision
        }
    }

    private func trustBundleChanged() async {
        await onTrustBundleChange?(trustBundle)
    }

    /// Applies one commit; whether the trust bundle changed.
    @discardableResult
    func apply(_ batch: StoreChanges) -> Bool {
        guard batch.revision > appliedRevision else { return false }
        var bundleChanged = false
        for change in batch.changes {
            let key = change.key
            do {
                switch key.collection {
                case .authority:
                    authorityDocuments[key.name] = try change.body.map {
                        try StoreCoding.decode(IdentityDocuments.Authority.self, $0, key: key)
                    }
                    try loadAuthorities()
                    bundleChanged = true
                case .joinToken:
                    tokens[key.name] = try change.body.map {
                        JoinToken(
                            stored: try StoreCoding.decode(IdentityDocuments.JoinToken.self, $0, key: key),
                            id: key.name
                        )
                    }
                    tokenRevisions[key.name] = change.body == nil ? nil : batch.revision
                case .credential:
                    credentials[key.name] = try change.body.map {
                        let stored = try StoreCoding.decode(IdentityDocuments.Credential.self, $0, key: key)
                        return Credential(service: stored.service, instance: stored.instance, expires: stored.expires)
                    }
                case .issued:
                    issued[key.name] = try change.body.map {
                        try StoreCoding.decode(IdentityDocuments.Issued.self, $0, key: key)
                    }
                case .revoked:
                    revoked[key.name] = try change.body.map {
                        try StoreCoding.decode(IdentityDocuments.Revoked.self, $0, key: key).expires
                    }
                    bundleChanged = true
                case .revokedScope:
                    // Another controller's revocation too: an issue here that raced it
                    // sees it once its own commit is applied (which comes after it).
                    let at = try change.body.map {
                        try StoreCoding.decode(IdentityDocuments.RevokedScope.self, $0, key: key).at
                    }
                    if let at { revokingScopes[key.name] = max(at, revokingScopes[key.name] ?? at) }
                case .operatorToken:
                    operatorTokens[key.name] = try change.body.map {
                        OperatorToken(
                            stored: try StoreCoding.decode(IdentityDocuments.OperatorToken.self, $0, key: key),
                            id: key.name
                        )
                    }
                default: continue
                }
            } catch {
                logger.error("a stored change is not readable", metadata: ["key": "\(key)", "error": "\(error)"])
            }
        }
        appliedRevision = batch.revision
        revisionWaiters.release(through: batch.revision)
        return bundleChanged
    }

    /// Commits `write` and waits until it is applied here; its failure said as the API
    /// says it (as `Controller.storeCall`).
    func commit(_ write: StoreWrite) async throws -> Int64 {
        let revision: Int64
        do {
            revision = try await store.commit(write)
        } catch let error as StoreError {
            switch error.code {
            case .conflict:
                throw APIError(status: .conflict, message: "changed concurrently (\(error.message)): try again")
            case .corrupt, .tooLarge: throw APIError(status: .internalServerError, message: error.message)
            default:
                throw APIError(status: .serviceUnavailable, message: "the store cannot commit now: \(error.message)")
            }
        }
        guard revision != 0 else { return appliedRevision }
        guard appliedRevision < revision else { return revision }
        let id = revisionWaiters.reserve()
        let timer = Task { [weak self] in
            try await Task.sleep(for: RevisionWaiters.timeout)
            await self?.appliedTimedOut(id)
        }
        let seen = await withCheckedContinuation { revisionWaiters.add(id, revision, $0) }
        timer.cancel()
        guard seen else {
            throw APIError(
                status: .serviceUnavailable,
                message: "the write landed at revision \(revision), but this controller has not seen it yet"
            )
        }
        return revision
    }

    private func appliedTimedOut(_ id: Int) {
        guard revisionWaiters.expire(id) else { return }
        logger.warning("a commit did not come back through the store's change stream: opening it again")
        following?.cancel()
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
        let pem = try created.pem()
        var write = StoreWrite(conditions: [.absent(IdentityDocuments.next)])
        try write.put(
            IdentityDocuments.next,
            json: IdentityDocuments.Authority(certificates: pem.certificates, key: pem.key)
        )
        _ = try await commit(write)
        logger.notice("CA rotation prepared: the new root is trusted, the old one still signs")
    }

    /// Step 2: the new CA signs; the old root stays trusted until every certificate it
    /// signed has expired (at most `maxLifetime` from now). Sidecars renew at once.
    func activateRotation() async throws {
        guard let next else {
            throw APIError(status: .conflict, message: "no rotation prepared (ctl ca rotate)")
        }
        let after = Date().addingTimeInterval(Double(maxLifetime.components.seconds))
        let old = CertificateAuthority.fingerprint(authority.root)
        guard var retiringDocument = authorityDocuments["active"], let nextDocument = authorityDocuments["next"] else {
            throw APIError(status: .conflict, message: "no rotation prepared (ctl ca rotate)")
        }
        _ = next
        retiringDocument.retireAfter = after
        // One commit: the old root retires, the prepared one signs.
        var write = StoreWrite(conditions: [.absent(IdentityDocuments.retiring(old))])
        try write.put(IdentityDocuments.retiring(old), json: retiringDocument)
        try write.put(IdentityDocuments.active, json: nextDocument)
        write.delete(IdentityDocuments.next)
        _ = try await commit(write)
        logger.notice("CA rotation activated: the new root signs", metadata: ["retiring": "\(old)"])
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
        var write = StoreWrite()
        for name in authorityDocuments.keys.sorted() where name.hasPrefix("retiring-") {
            write.delete(StoreKey(.authority, name))
        }
        _ = try await commit(write)
        logger.notice("CA rotation finished: only the new root is trusted")
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

    func createJoinToken(service: String, ttl: Duration, uses: Int) async throws -> CreatedToken {
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
        var write = StoreWrite(conditions: [.absent(StoreKey(.joinToken, id))])
        try write.put(StoreKey(.joinToken, id), json: Self.document(token))
        _ = try await commit(write)
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

    func deleteToken(_ id: String) async throws -> Bool {
        let key: StoreKey
        if operatorTokens[id] != nil {
            key = StoreKey(.operatorToken, id)
        } else if tokens[id] != nil {
            key = StoreKey(.joinToken, id)
        } else {
            return false
        }
        var write = StoreWrite()
        write.delete(key)
        _ = try await commit(write)
        return true
    }

    /// Spends one use of a join token; the service it is for, or why it is refused.
    private func redeem(_ text: String, now: Date) async throws -> (service: String, token: String) {
        // Conditional on the token's document: a use spent meanwhile (here or on another
        // controller) is seen, and the redemption decides again from it.
        for attempt in 1...3 {
            do {
                return try await redeemOnce(text, now: now)
            } catch let error as APIError where error.status == .conflict && attempt < 3 {
                continue
            }
        }
        throw APIError(status: .conflict, message: "the join token is being redeemed concurrently: try again")
    }

    private func redeemOnce(_ text: String, now: Date) async throws -> (service: String, token: String) {
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
        let key = StoreKey(.joinToken, token.id)
        var write = StoreWrite(conditions: [.unchanged(key, since: tokenRevisions[token.id] ?? 0)])
        try write.put(key, json: Self.document(token))
        _ = try await commit(write)
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
    func issue(_ request: CertificateRequest, now: Date = Date()) async throws -> IssuedCertificate {
        let id: SPIFFEID
        let via: String
        // What the new certificate is issued under: the join token it descends from and
        // the instance, carried over renewals, so a revocation finds every certificate.
        var lineage: (token: String?, instance: String?) = (nil, request.instance)
        if let token = request.token {
            let redeemed = try await redeem(token, now: now)
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
            if let serial = Self.leafSerial(certificate), let parent = issued[serial] {
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
        let serial = Self.hex(chain[0].serialNumber.bytes)
        var write = StoreWrite()
        try write.put(
            StoreKey(.credential, Self.hash(credential)),
            json: IdentityDocuments.Credential(
                service: record.service,
                instance: record.instance,
                expires: record.expires
            )
        )
        try write.put(
            StoreKey(.issued, serial),
            json: IdentityDocuments.Issued(
                service: record.service,
                instance: lineage.instance,
                token: lineage.token,
                credential: Self.hash(credential),
                expires: record.expires
            )
        )
        // What expired goes with it, a bounded number at a time (the write stays within
        // `StoreWrite.maxOperations`).
        for hash in credentials.filter({ $0.value.expires <= now }).keys.sorted().prefix(32) {
            write.delete(StoreKey(.credential, hash))
        }
        for serial in issued.filter({ $0.value.expires <= now }).keys.sorted().prefix(32) {
            write.delete(StoreKey(.issued, serial))
        }
        _ = try await commit(write)
        // A revocation of this lineage that began while this request was suspended did not
        // see the certificate: refuse it now rather than hand out a revoked identity.
        let scopes = [
            "service:\(record.service)", lineage.instance.map { "instance:\($0)" }, lineage.token.map { "token:\($0)" },
        ].compactMap { $0 }
        if scopes.contains(where: { revokingScopes[$0].map { $0 >= now } ?? false }) {
            var revocation = StoreWrite()
            try revocation.put(StoreKey(.revoked, serial), json: IdentityDocuments.Revoked(expires: record.expires))
            revocation.delete(StoreKey(.credential, Self.hash(credential)))
            _ = try await commit(revocation)
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

extension IdentityService.JoinToken {
    init(stored: IdentityDocuments.JoinToken, id: String) {
        self.init(
            id: id,
            secretHash: stored.secretHash,
            service: stored.service,
            expires: stored.expires,
            usesLeft: stored.usesLeft,
            created: stored.created
        )
    }
}

extension OperatorToken {
    init(stored: IdentityDocuments.OperatorToken, id: String) {
        self.init(
            id: id,
            secretHash: stored.secretHash,
            scope: OperatorScope(rawValue: stored.scope) ?? .read,
            expires: stored.expires,
            created: stored.created
        )
    }
}

import Foundation
import Logging
import MeshworkDataPlane
import MeshworkIdentity
import MeshworkModel
import NIOSSL
import ServiceLifecycle

/// The workload identity, one of the discovery agent's services: a key made in memory, a
/// CSR sent with the join token for the first certificate, renewal at two thirds of its
/// lifetime with the current certificate (a fresh key each time), and the trust bundle from
/// the watch stream. Each new certificate goes into the sidecar's `MeshTLSSource`: new
/// connections use it, open ones carry on. The other services wait for the first one
/// (`ready`): without it the sidecar can neither serve nor call peers.
actor WorkloadIdentityAgent: Service {
    let config: SidecarConfig
    let sidecar: Sidecar
    let link: HTTPControllerClient
    let instanceID: String?
    let logger: Logger
    /// Opens once the first certificate is installed.
    let ready: Latch
    /// The workload key and certificate.
    var workload: (key: WorkloadKey, issued: IssuedCertificate)?
    var trustBundle: String?
    /// Set when a CA rotation makes the current certificate's root inactive.
    var renewSoon = false
    /// Whether the controller's roots came from the join token's pin.
    var pinnedTrust = false
    private let wakeup = Wakeup()

    init(
        config: SidecarConfig,
        sidecar: Sidecar,
        link: HTTPControllerClient,
        instanceID: String?,
        ready: Latch,
        logger: Logger
    ) {
        self.config = config
        self.sidecar = sidecar
        self.link = link
        self.instanceID = instanceID
        self.ready = ready
        self.logger = logger
    }

    func run() async throws {
        try await runUntilShutdown {
            try await self.bootstrapIdentity()
            self.ready.open()
            try await self.renewalLoop()
        }
    }

    /// Gets the first certificate; retries while the controller is unreachable, gives up
    /// (throws) when it refuses the join token: a used or expired token will not get better.
    private func bootstrapIdentity() async throws {
        guard let link = config.controller, let file = link.joinTokenFile else { return }
        // A restarted sidecar serves with the identity it had (and renews it with a proof
        // when the controller is back): its join token was used up on the first start.
        if loadCachedIdentity() { return }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw ControllerClientError("cannot read controller.joinTokenFile \(file)")
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        var backoff = Duration.milliseconds(200)
        while true {
            do {
                // An https:// controller with no CA file: trust what the token's pin names.
                if self.link.isHTTPS, link.caFile == nil, !pinnedTrust {
                    guard let pin = Self.pin(inJoinToken: token) else {
                        throw ControllerClientError(
                            "an https:// controller needs controller.caFile (--controller-ca) or a join token with the CA pin (id.secret.pin)",
                            refused: true
                        )
                    }
                    try await trustController(pinned: pin)
                }
            } catch let error as ControllerClientError where error.refused {
                logger.error("cannot verify the controller", metadata: ["error": "\(error)"])
                throw error
            } catch {
                logger.warning(
                    "cannot reach the controller for its trust bundle",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)"]
                )
                try await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
                continue
            }
            let key = WorkloadKey()
            do {
                try await obtainCertificate(for: key, "issued") { _ in ["token": token] }
                return
            } catch let error as ControllerClientError where error.refused {
                logger.error("the controller refused the join token", metadata: ["error": "\(error)"])
                throw error
            } catch {
                logger.warning(
                    "cannot reach the controller for a certificate",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)"]
                )
            }
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// Renews at two thirds of the lifetime; on failure retries every second (with the
    /// current certificate, while it is still valid).
    private func renewalLoop() async throws {
        while let current = workload {
            let wait = current.issued.renewAt.timeIntervalSinceNow
            if wait > 0, !renewSoon { try await wakeup.sleep(for: .milliseconds(Int64(wait * 1000))) }
            // Woken early for something else (a shutdown, a health check): sleep again.
            guard renewSoon || current.issued.renewAt.timeIntervalSinceNow <= 0 else { continue }
            renewSoon = false
            let key = WorkloadKey()
            do {
                try await obtainCertificate(for: key, "renewed") { csr in
                    ["certificate": current.issued.certificate, "proof": try current.key.proof(forCSR: csr)]
                }
            } catch {
                try Task.checkCancellation()
                logger.warning("certificate renewal failed; retrying", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Sends a CSR for `key` with the credential fields `authenticate` gives for it (a
    /// join token, or the current certificate and a proof), plus the requested lifetime and
    /// this instance's id; installs what comes back.
    private func obtainCertificate(
        for key: WorkloadKey,
        _ verb: String,
        authenticate: (String) throws -> [String: String]
    ) async throws {
        let csr = try key.csr(commonName: config.service)
        var fields = try authenticate(csr)
        fields["csr"] = csr
        if let ttl = config.controller?.certificateTTL { fields["ttl"] = "\(ttl.duration.components.seconds)s" }
        if let instanceID { fields["instance"] = instanceID }
        let issued = try await link.requestCertificate(fields)
        try install(key: key, issued: issued)
        logger.info(
            "workload certificate \(verb)",
            metadata: ["identity": "\(issued.spiffeID)", "not-after": "\(issued.notAfter)"]
        )
    }

    /// A new trust bundle from the watch stream (a CA rotation step): the current
    /// certificate with the new roots; and when another root now signs, a renewal at once,
    /// so this workload's certificate comes from it before the old root is dropped.
    func trustBundleChanged(_ bundle: String, activeRoot: String?) {
        guard let current = workload else { return }
        if bundle != trustBundle {
            var issued = current.issued
            issued.trustBundle = bundle
            do {
                try install(key: current.key, issued: issued)
                logger.info("trust bundle updated", metadata: ["active-root": "\(activeRoot ?? "?")"])
            } catch {
                logger.error(
                    "the new trust bundle is unusable; keeping the old one",
                    metadata: ["error": "\(error)"]
                )
            }
        }
        if let activeRoot, let root = current.issued.root, root != activeRoot {
            logger.info("the mesh CA changed; renewing now", metadata: ["active-root": "\(activeRoot)"])
            renewSoon = true
            wakeup.wake()
        }
    }

    /// The CA pin of a join token `<id>.<secret>.<pin>`: the SHA-256 of the mesh root's DER.
    static func pin(inJoinToken token: String) -> String? {
        let parts = token.split(separator: ".")
        guard parts.count == 3, parts[2].count == 64, parts[2].allSatisfy(\.isHexDigit) else { return nil }
        return parts[2].lowercased()
    }

    /// Fetches the trust bundle over a connection that verifies nothing and takes from it
    /// exactly one certificate: the root whose SHA-256 is the join token's `pin`. From
    /// then on the controller is verified by that root alone, so a server whose certificate
    /// chains to any other root (an interceptor that served the real root beside its own)
    /// fails the handshake and never sees the token or the CSR. The rest of the bundle (the
    /// roots of a rotation) arrives with the certificate, over the verified connection
    /// (kubeadm's discovery-token CA pinning, the same idea).
    private func trustController(pinned pin: String) async throws {
        let bundle = try await link.unverifiedTrustBundle()
        guard let found = CertificateAuthority.pinnedRoot(inPEMBundle: bundle, pin: pin) else {
            throw ControllerClientError("the controller's trust bundle does not parse")
        }
        guard let der = found.der, let root = try? NIOSSLCertificate(bytes: der, format: .der) else {
            throw ControllerClientError(
                "the controller's CA (\(found.fingerprints.joined(separator: ", "))) is not the one the join token names (\(pin))",
                refused: true
            )
        }
        link.retrust([root])
        // Nothing else from the unverified answer is kept: the issued certificate's bundle
        // replaces this trust (install).
        trustBundle = nil
        pinnedTrust = true
        logger.info("controller verified by the join token's CA pin", metadata: ["pin": "\(pin)"])
    }

    /// `<controller.cacheFile>.identity`: the workload key and certificate, kept so a
    /// restarted sidecar can serve while the controller is away.
    var identityFile: String? { config.controller?.cacheFile.map { $0 + ".identity" } }

    private struct CachedIdentity: Codable {
        var key: String
        var issued: IssuedCertificate
    }

    /// Installs the cached identity when it is this service's and valid for a while yet.
    private func loadCachedIdentity() -> Bool {
        guard let file = identityFile, let data = FileManager.default.contents(atPath: file) else { return false }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let cached = try? decoder.decode(CachedIdentity.self, from: data),
            let key = try? WorkloadKey(pem: cached.key)
        else {
            logger.warning("ignoring an unreadable identity cache", metadata: ["file": "\(file)"])
            return false
        }
        guard SPIFFEID(cached.issued.spiffeID)?.serviceName == config.service else {
            logger.warning(
                "ignoring a cached identity of another service",
                metadata: ["file": "\(file)", "identity": "\(cached.issued.spiffeID)"]
            )
            return false
        }
        guard cached.issued.notAfter.timeIntervalSinceNow > 5 else {
            logger.info("the cached certificate has expired; joining again", metadata: ["file": "\(file)"])
            return false
        }
        do {
            try install(key: key, issued: cached.issued)
        } catch {
            logger.warning("the cached identity is unusable", metadata: ["file": "\(file)", "error": "\(error)"])
            return false
        }
        logger.info(
            "workload identity from the cache",
            metadata: ["identity": "\(cached.issued.spiffeID)", "not-after": "\(cached.issued.notAfter)"]
        )
        return true
    }

    /// Written aside (mode 0600: it holds the private key) and renamed over the old one
    /// (`SecretFile`).
    private func saveIdentity(key: WorkloadKey, issued: IssuedCertificate) {
        guard let file = identityFile else { return }
        do {
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            let data = try encoder.encode(CachedIdentity(key: key.pem, issued: issued))
            try SecretFile.write(data, to: file)
        } catch {
            logger.warning("cannot write the identity cache", metadata: ["file": "\(file)", "error": "\(error)"])
        }
    }

    private func install(key: WorkloadKey, issued: IssuedCertificate) throws {
        guard let id = SPIFFEID(issued.spiffeID), let source = sidecar.meshTLS else {
            throw ControllerClientError("the controller issued an unusable identity \(issued.spiffeID)")
        }
        try source.update(
            certificateChain: issued.certificate,
            privateKey: key.pem,
            trustBundle: issued.trustBundle,
            identity: id
        )
        workload = (key, issued)
        if link.isHTTPS, issued.trustBundle != trustBundle,
            let roots = try? NIOSSLCertificate.fromPEMBytes(Array(issued.trustBundle.utf8)), !roots.isEmpty
        {
            // The controller's API certificate comes from the mesh CA: verify it with the
            // bundle from now on (it follows CA rotations). A watch on the old connection
            // ends and resumes on the new one.
            link.retrust(roots)
        }
        trustBundle = issued.trustBundle
        if let credential = issued.credential { link.setCredential(credential) }
        saveIdentity(key: key, issued: issued)
    }
}

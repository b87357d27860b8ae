import AsyncHTTPClient
import Foundation
import Logging
import MeshworkDataPlane
import MeshworkIdentity
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOSSL

/// The workload identity: a key made in memory, a CSR sent with the join token for the
/// first certificate, renewal at two thirds of its lifetime with the current certificate
/// (a fresh key each time), and the trust bundle from the watch stream. Each new
/// certificate goes into the sidecar's `MeshTLSSource`: new connections use it, open ones
/// carry on.
extension DiscoveryAgent {
    /// Gets the first certificate; retries while the controller is unreachable, gives up
    /// (throws) when it refuses the join token: a used or expired token will not get better.
    func bootstrapIdentity() async throws {
        guard let link = config.controller, let file = link.joinTokenFile else { return }
        // A restarted sidecar serves with the identity it had (and renews it with a proof
        // when the controller is back): its join token was used up on the first start.
        if loadCachedIdentity() { return }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw ControllerClient.Failure(description: "cannot read controller.joinTokenFile \(file)")
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        var backoff = Duration.milliseconds(200)
        while !stopping {
            do {
                // An https:// controller with no CA file: trust what the token's pin names.
                if link.url.hasPrefix("https://"), link.caFile == nil, !pinnedTrust {
                    guard let pin = Self.pin(inJoinToken: token) else {
                        throw ControllerClient.Failure(
                            description:
                                "an https:// controller needs controller.caFile (--controller-ca) or a join token with the CA pin (id.secret.pin)",
                            refused: true
                        )
                    }
                    try await trustController(pinned: pin)
                }
            } catch let error as ControllerClient.Failure where error.refused {
                logger.error("cannot verify the controller", metadata: ["error": "\(error)"])
                throw error
            } catch {
                logger.warning(
                    "cannot reach the controller for its trust bundle",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)"]
                )
                await pause(backoff)
                backoff = min(backoff * 2, .seconds(5))
                continue
            }
            let key = WorkloadKey()
            do {
                try await obtainCertificate(for: key, "issued") { _ in ["token": token] }
                return
            } catch let error as ControllerClient.Failure where error.refused {
                logger.error("the controller refused the join token", metadata: ["error": "\(error)"])
                throw error
            } catch {
                logger.warning(
                    "cannot reach the controller for a certificate",
                    metadata: ["error": "\(error)", "retry-in": "\(backoff)"]
                )
            }
            await pause(backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// Renews at two thirds of the lifetime; on failure retries every second (with the
    /// current certificate, while it is still valid).
    func renewalLoop() async {
        while !stopping, let current = workload {
            let wait = current.issued.renewAt.timeIntervalSinceNow
            if wait > 0, !renewSoon { await pause(.milliseconds(Int64(wait * 1000))) }
            if stopping { return }
            // Woken early for something else (a shutdown, a health check): sleep again.
            guard renewSoon || current.issued.renewAt.timeIntervalSinceNow <= 0 else { continue }
            renewSoon = false
            let key = WorkloadKey()
            do {
                try await obtainCertificate(for: key, "renewed") { csr in
                    ["certificate": current.issued.certificate, "proof": try current.key.proof(forCSR: csr)]
                }
            } catch {
                logger.warning("certificate renewal failed; retrying", metadata: ["error": "\(error)"])
                await pause(.seconds(1))
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
        if let instance = await makeInstance() { fields["instance"] = instance.id }
        let issued = try await client.requestCertificate(fields)
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
            wakeAll()
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
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(10))
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        configuration.tlsConfiguration = tls
        let unverified = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        defer { Task { try? await unverified.shutdown() } }
        let response = try await unverified.execute(
            HTTPClientRequest(url: client.baseURL + "/v1/trust-bundle"),
            timeout: .seconds(10)
        )
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw ControllerClient.Failure(description: "trust bundle: \(response.status.code)")
        }
        guard let found = CertificateAuthority.pinnedRoot(inPEMBundle: String(buffer: body), pin: pin) else {
            throw ControllerClient.Failure(description: "the controller's trust bundle does not parse")
        }
        guard let der = found.der, let root = try? NIOSSLCertificate(bytes: der, format: .der) else {
            throw ControllerClient.Failure(
                description:
                    "the controller's CA (\(found.fingerprints.joined(separator: ", "))) is not the one the join token names (\(pin))",
                refused: true
            )
        }
        let old = controllerHTTP
        controllerHTTP = Self.makeControllerHTTP(group: group, roots: .certificates([root]))
        client = ControllerClient(baseURL: client.baseURL, token: client.token, http: controllerHTTP!)
        // Nothing else from the unverified answer is kept: the issued certificate's bundle
        // replaces this trust (install).
        trustBundle = nil
        pinnedTrust = true
        if let old { Task { try? await old.shutdown() } }
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
            throw ControllerClient.Failure(description: "the controller issued an unusable identity \(issued.spiffeID)")
        }
        try source.update(
            certificateChain: issued.certificate,
            privateKey: key.pem,
            trustBundle: issued.trustBundle,
            identity: id
        )
        workload = (key, issued)
        if controllerHTTP != nil, issued.trustBundle != trustBundle,
            let roots = try? NIOSSLCertificate.fromPEMBytes(Array(issued.trustBundle.utf8)), !roots.isEmpty
        {
            // The controller's API certificate comes from the mesh CA: verify it with the
            // bundle from now on (it follows CA rotations). A watch on the old client ends
            // and resumes on the new one.
            let old = controllerHTTP
            controllerHTTP = Self.makeControllerHTTP(group: group, roots: .certificates(roots))
            client = ControllerClient(baseURL: client.baseURL, token: client.token, http: controllerHTTP!)
            Task { try? await old?.shutdown() }
        }
        trustBundle = issued.trustBundle
        if let credential = issued.credential {
            client = ControllerClient(baseURL: client.baseURL, token: credential, http: client.http)
        }
        saveIdentity(key: key, issued: issued)
    }
}

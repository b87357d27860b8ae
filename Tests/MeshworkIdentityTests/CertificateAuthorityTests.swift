import Crypto
import Foundation
import MeshworkIdentity
import MeshworkModel
import SwiftASN1
import Testing
import X509

@Suite struct CertificateAuthorityTests {
    let orders = SPIFFEID.service("orders", trustDomain: "mesh.test")

    func issue(
        _ ca: CertificateAuthority,
        key: WorkloadKey = WorkloadKey(),
        id: SPIFFEID,
        lifetime: Duration = .seconds(86_400),
        now: Date = Date()
    ) throws -> [Certificate] {
        let csr = try CertificateSigningRequest(pemEncoded: key.csr(for: id))
        return try ca.issue(csr: csr, for: id, lifetime: lifetime, now: now)
    }

    @Test func issuedCertificateFollowsTheX509SVIDRules() throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let key = WorkloadKey()
        let chain = try issue(ca, key: key, id: orders, lifetime: .seconds(3600))
        #expect(chain.count == 1)
        let leaf = chain[0]
        #expect(leaf.publicKey == key.publicKey)
        #expect(CertificateIdentity.spiffeIDs(of: leaf) == [orders])
        #expect(try leaf.extensions.basicConstraints == .notCertificateAuthority)
        let basic = try #require(leaf.extensions[oid: .X509ExtensionID.basicConstraints])
        #expect(basic.critical)
        let usage = try #require(try leaf.extensions.keyUsage)
        #expect(usage.digitalSignature && !usage.keyCertSign)
        #expect(try #require(leaf.extensions[oid: .X509ExtensionID.keyUsage]).critical)
        let eku = try #require(try leaf.extensions.extendedKeyUsage)
        #expect(eku.contains(.serverAuth) && eku.contains(.clientAuth))
        #expect(leaf.notValidAfter.timeIntervalSince(leaf.notValidBefore) <= 3600 + 60)
        #expect(ca.root.publicKey.isValidSignature(leaf.signature, for: leaf))
    }

    @Test func opensslShowsTheSPIFFESANAndExtensions() throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let pem = try CertificateAuthority.pem(issue(ca, id: orders))
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("svid-\(UUID()).pem")
        try pem.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "x509", "-noout", "-text", "-in", file.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text.contains("URI:spiffe://mesh.test/service/orders"))
        #expect(text.contains("CA:FALSE"))
        #expect(text.contains("X509v3 Key Usage: critical"))
        #expect(text.contains("Digital Signature"))
        #expect(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        #expect(text.contains("ecdsa-with-SHA256"))
    }

    @Test func csrAskingForAnotherIdentityIsRefused() throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let payments = SPIFFEID.service("payments", trustDomain: "mesh.test")
        let csr = try CertificateSigningRequest(pemEncoded: WorkloadKey().csr(for: payments))
        #expect(throws: IdentityError.self) { try ca.issue(csr: csr, for: orders, lifetime: .seconds(60)) }
        do {
            _ = try ca.issue(csr: csr, for: orders, lifetime: .seconds(60))
        } catch {
            #expect(error.field == "csr.san")
            #expect(error.reason.contains("payments"))
        }
    }

    @Test func csrWithABadSignatureIsRefused() throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let good = try CertificateSigningRequest(pemEncoded: WorkloadKey().csr(for: orders))
        let other = try CertificateSigningRequest(pemEncoded: WorkloadKey().csr(for: orders))
        // The public key of one CSR with the signature of another.
        let forged = try CertificateSigningRequest(
            version: good.version,
            subject: good.subject,
            publicKey: good.publicKey,
            attributes: good.attributes,
            signatureAlgorithm: other.signatureAlgorithm,
            signature: other.signature
        )
        do {
            _ = try ca.issue(csr: forged, for: orders, lifetime: .seconds(60))
            Issue.record("a forged CSR was signed")
        } catch {
            #expect(error.field == "csr")
        }
    }

    @Test func caRoundTripsThroughPEMAndRefusesAMismatchedKey() throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let pem = try ca.pem()
        let loaded = try CertificateAuthority(
            certificatePEM: pem.certificates,
            keyPEM: pem.key,
            trustDomain: "mesh.test"
        )
        #expect(loaded.root == ca.root)
        let leaf = try issue(loaded, id: orders)[0]
        #expect(ca.root.publicKey.isValidSignature(leaf.signature, for: leaf))

        let otherKey = try CertificateAuthority.generateRoot(trustDomain: "mesh.test").pem().key
        #expect(throws: IdentityError(field: "ca-key", reason: "does not match the first certificate in ca-cert")) {
            try CertificateAuthority(certificatePEM: pem.certificates, keyPEM: otherKey, trustDomain: "mesh.test")
        }
        #expect(throws: IdentityError.self) {
            try CertificateAuthority(certificatePEM: "not pem", keyPEM: pem.key, trustDomain: "mesh.test")
        }
    }

    @Test func operatorIntermediateSignsLeavesThatChainToTheRoot() async throws {
        let root = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let rootPEM = try root.pem()
        let rootKey = try Certificate.PrivateKey(pemEncoded: rootPEM.key)
        let intermediateKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let intermediate = try Certificate(
            version: .v3,
            serialNumber: .init(),
            publicKey: intermediateKey.publicKey,
            notValidBefore: Date().addingTimeInterval(-60),
            notValidAfter: Date().addingTimeInterval(86_400),
            issuer: root.root.subject,
            subject: try DistinguishedName { CommonName("intermediate") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: rootKey
        )
        let ca = try CertificateAuthority(
            certificatePEM: CertificateAuthority.pem([intermediate, root.root]),
            keyPEM: try intermediateKey.serializeAsPEM().pemString,
            trustDomain: "mesh.test"
        )
        let chain = try issue(ca, id: orders)
        #expect(chain.count == 2)
        #expect(chain[1] == intermediate)
        var verifier = Verifier(rootCertificates: CertificateStore([root.root])) { RFC5280Policy() }
        let result = await verifier.validate(leaf: chain[0], intermediates: CertificateStore([intermediate]))
        guard case .validCertificate = result else {
            Issue.record("the chain does not verify: \(result)")
            return
        }
    }

    // MARK: renewal

    @Test func renewalWithTheCurrentCertificateAndItsKey() async throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let key = WorkloadKey()
        let current = try CertificateAuthority.pem(issue(ca, key: key, id: orders))
        let next = WorkloadKey()
        let csr = try next.csr(for: orders)
        let id = try await CertificateIdentity.verifyRenewal(
            chainPEM: current,
            csrPEM: csr,
            proof: key.proof(forCSR: csr),
            roots: [ca.root]
        )
        #expect(id == orders)
    }

    @Test func renewalIsRefusedWithoutTheKeyWithAnotherCAOrWhenExpired() async throws {
        let ca = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let key = WorkloadKey()
        let current = try CertificateAuthority.pem(issue(ca, key: key, id: orders))
        let csr = try WorkloadKey().csr(for: orders)

        // A stolen certificate without its key.
        await #expect(throws: IdentityError.self) {
            try await CertificateIdentity.verifyRenewal(
                chainPEM: current,
                csrPEM: csr,
                proof: WorkloadKey().proof(forCSR: csr),
                roots: [ca.root]
            )
        }
        // A certificate from another CA.
        let other = try CertificateAuthority.generateRoot(trustDomain: "mesh.test")
        let foreign = try CertificateAuthority.pem(issue(other, key: key, id: orders))
        await #expect(throws: IdentityError.self) {
            try await CertificateIdentity.verifyRenewal(
                chainPEM: foreign,
                csrPEM: csr,
                proof: key.proof(forCSR: csr),
                roots: [ca.root]
            )
        }
        // An expired certificate.
        let old = try CertificateAuthority.pem(
            issue(ca, key: key, id: orders, lifetime: .seconds(60), now: Date().addingTimeInterval(-7200))
        )
        do {
            _ = try await CertificateIdentity.verifyRenewal(
                chainPEM: old,
                csrPEM: csr,
                proof: key.proof(forCSR: csr),
                roots: [ca.root]
            )
            Issue.record("an expired certificate renewed")
        } catch let error as IdentityError {
            #expect(error.field == "certificate")
        }
    }

    @Test func renewAtIsTwoThirdsIntoTheLifetime() {
        let start = Date(timeIntervalSince1970: 1_000_000)
        let issued = IssuedCertificate(
            certificate: "",
            trustBundle: "",
            spiffeID: orders.description,
            notBefore: start.addingTimeInterval(-60),
            notAfter: start.addingTimeInterval(3000),
            issuedAt: start,
            credential: nil
        )
        #expect(issued.renewAt == start.addingTimeInterval(2000))
    }
}

import Crypto
import Foundation
import Logging
import MeshworkIdentity
import SwiftASN1
import Testing
import X509

@testable import MeshworkController

/// Two controllers' identity services on one store (one SQLite file, or two etcd clients
/// on one prefix): a revocation on one catches a certificate the other issued while it
/// ran, though neither saw the other's request.
@Suite("Revocation across controllers", .serialized)
struct RevocationAcrossControllersTests {
    @Test(arguments: ControllerStoreTests.Backend.allCases)
    func anIssueOnAnotherControllerThatRacedARevocationIsRefused(_ backend: ControllerStoreTests.Backend) async throws {
        try await StoreHarness.with(backend) { store, endpoints in
            let other: any ControllerStore
            if let etcd = store as? EtcdStore {
                other = EtcdStore(
                    client: try EtcdClient(
                        options: .init(endpoints: endpoints.split(separator: ",").map(String.init)),
                        logger: Logger(label: "test")
                    ),
                    prefix: etcd.prefix
                )
            } else {
                other = store
            }
            let a = try await Self.identity(store)
            let b = try await Self.identity(other)
            let following = [Task { await a.follow() }, Task { await b.follow() }]
            defer { for task in following { task.cancel() } }

            let token = try await a.createJoinToken(service: "orders", ttl: .seconds(600), uses: 2)
            let began = Date()
            // The revocation (on a) lands while b's issue of that instance, begun before it,
            // is in flight: b commits after it.
            _ = try await a.revoke(.init(scope: .instance, value: "orders-1"), now: began.addingTimeInterval(1))
            do {
                _ = try await b.issue(try Self.request(token.token), now: began)
                Issue.record("b issued a certificate of orders-1 that a revocation of orders-1 raced")
            } catch let error as APIError {
                let refused = "\(error.status)".hasPrefix("403")
                #expect(refused && error.message.contains("revoked while being issued"), "\(error)")
            }
            // What b issued and refused is revoked, for every controller.
            let revokedOnA = try await eventually { await a.revoked.count == 1 }
            #expect(revokedOnA, "a knows the certificate b refused as revoked")
            // A join after the revocation is a new instance's: it is issued.
            let later = try await b.issue(try Self.request(token.token), now: began.addingTimeInterval(2))
            #expect(later.spiffeID == "spiffe://mesh.local/service/orders")
            if other !== store { await other.close() }
        }
    }

    static func identity(_ store: any ControllerStore) async throws -> IdentityService {
        try await IdentityService.open(
            store: store,
            snapshot: try await store.load(),
            trustDomain: "mesh.local",
            supplied: nil,
            maxLifetime: .seconds(3600),
            metrics: ControllerMetrics(),
            logger: Logger(label: "test")
        )
    }

    static func request(_ token: String) throws -> IdentityService.CertificateRequest {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1,
            subject: try DistinguishedName { CommonName("workload") },
            privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256
        )
        return IdentityService.CertificateRequest(
            csr: try csr.serializeAsPEM().pemString,
            token: token,
            instance: "orders-1"
        )
    }

    func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        for _ in 0..<100 {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }
}

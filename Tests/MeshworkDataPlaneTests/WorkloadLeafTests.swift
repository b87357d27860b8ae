import Foundation
import MeshworkModel
import NIOSSL
import Testing

@testable import MeshworkDataPlane

/// The leaf checks of every mesh handshake, with what they read off a certificate kept per
/// certificate: the same verdicts from the cache as from a first parse, and a revocation
/// that applies to a certificate already seen.
@Suite struct WorkloadLeafTests {
    static let certs = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/certs").path

    func certificate(_ name: String) throws -> NIOSSLCertificate {
        try #require(try NIOSSLCertificate.fromPEMFile("\(Self.certs)/\(name).pem").first)
    }

    @Test func aCachedVerdictIsTheFirstOneAndARevocationStillApplies() throws {
        let web = try certificate("web")
        let first = WorkloadLeaf.facts(web)
        #expect(first.refusal == nil)
        #expect(first.identities.map(\.description) == ["spiffe://meshwork.test/service/web"])
        let serial = try #require(first.serial)
        // Again, from another copy of the same certificate (as each handshake has its own).
        let again = WorkloadLeaf.facts(try certificate("web"))
        #expect(again.refusal == nil && again.serial == serial && again.identities == first.identities)
        #expect(WorkloadLeaf.refusal(web) == nil)
        #expect(WorkloadLeaf.refusal(web, revoked: [serial]) == "a revoked certificate (serial \(serial))")
        #expect(WorkloadLeaf.refusal(web, revoked: ["00"]) == nil)
        // The CA's own certificate is no workload's, the first time and every time after.
        let ca = try certificate("mesh-ca")
        #expect(WorkloadLeaf.refusal(ca)?.hasPrefix("a CA") == true)
        #expect(WorkloadLeaf.refusal(ca)?.hasPrefix("a CA") == true)
    }
}

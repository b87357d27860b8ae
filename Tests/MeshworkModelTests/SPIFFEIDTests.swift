import MeshworkModel
import Testing

@Suite struct SPIFFEIDTests {
    @Test func parsesServiceIdentities() throws {
        let id = try #require(SPIFFEID("spiffe://mesh.local/service/orders"))
        #expect(id.trustDomain == "mesh.local")
        #expect(id.path == "/service/orders")
        #expect(id.serviceName == "orders")
        #expect(id == .service("orders", trustDomain: "mesh.local"))
        #expect(id.description == "spiffe://mesh.local/service/orders")
        #expect(SPIFFEID("spiffe://mesh.local")?.path == "")
        #expect(SPIFFEID("spiffe://mesh.local/ns/a/sa/b")?.serviceName == nil)
    }

    @Test(arguments: [
        "http://mesh.local/service/orders",
        "spiffe://",
        "spiffe://Mesh.Local/service/orders",
        "spiffe://mesh.local:443/service/orders",
        "spiffe://user@mesh.local/x",
        "spiffe://mesh.local/service//orders",
        "spiffe://mesh.local/service/../orders",
        "spiffe://mesh.local/service/orders/",
        "spiffe://mesh.local/service/or ders",
        "spiffe://mesh.local/service/orders?x=1",
    ])
    func refusesWhatTheSpecForbids(_ text: String) {
        #expect(SPIFFEID(text) == nil)
    }

    @Test func patternsMatchExactlyByDomainOrAnyone() throws {
        let web = SPIFFEID.service("web", trustDomain: "mesh.local")
        let foreign = SPIFFEID.service("web", trustDomain: "other.local")
        let exact = try #require(IdentityPattern("spiffe://mesh.local/service/web"))
        let domain = try #require(IdentityPattern("spiffe://mesh.local/*"))
        let any = try #require(IdentityPattern("*"))
        #expect(exact.matches(web) && !exact.matches(.service("api", trustDomain: "mesh.local")))
        #expect(domain.matches(web) && !domain.matches(foreign))
        #expect(any.matches(foreign))
        #expect(IdentityPattern("spiffe://mesh.local/service/*") == nil)
        #expect(IdentityPattern("web") == nil)
    }
}

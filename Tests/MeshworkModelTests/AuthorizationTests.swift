import MeshworkModel
import Testing

@Suite struct AuthorizationTests {
    let web = SPIFFEID.service("web", trustDomain: "mesh.local")
    let batch = SPIFFEID.service("batch", trustDomain: "mesh.local")
    let foreign = SPIFFEID.service("web", trustDomain: "partner.example")

    func policy(_ yaml: String) throws -> AuthorizationPolicy {
        try AuthorizationPolicy.parse(yaml)
    }

    @Test func withoutPoliciesTheMeshDefaultDecides() {
        let open = AuthorizationTable(service: "orders", policies: [], mesh: MeshSettings())
        #expect(open.decide(source: nil, port: 1, method: "GET", path: "/").isAllowed)
        let closed = AuthorizationTable(
            service: "orders",
            policies: [],
            mesh: MeshSettings(defaultAuthorization: .deny)
        )
        #expect(!closed.decide(source: web, port: 1, method: "GET", path: "/").isAllowed)
    }

    @Test func allowPoliciesAdmitOnlyWhatTheyMatch() throws {
        let allowWeb = try policy(
            """
            name: web-reads
            target: orders
            from: ["spiffe://mesh.local/service/web"]
            methods: [GET, HEAD]
            paths: [/api/]
            """
        )
        let table = AuthorizationTable(service: "orders", policies: [allowWeb], mesh: MeshSettings())
        #expect(table.decide(source: web, port: 1, method: "GET", path: "/api/orders?x=1").isAllowed)
        #expect(!table.decide(source: web, port: 1, method: "POST", path: "/api/orders").isAllowed)
        #expect(!table.decide(source: web, port: 1, method: "GET", path: "/admin").isAllowed)
        #expect(!table.decide(source: batch, port: 1, method: "GET", path: "/api/orders").isAllowed)
        #expect(!table.decide(source: nil, port: 1, method: "GET", path: "/api/orders").isAllowed)
        // A TCP connection has no path: a rule with paths never admits one.
        #expect(!table.decide(source: web, port: 1, method: nil, path: nil).isAllowed)
        // Policies for other services do not apply.
        let other = AuthorizationTable(service: "payments", policies: [allowWeb], mesh: MeshSettings())
        #expect(other.decide(source: batch, port: 1, method: "GET", path: "/").isAllowed)
    }

    @Test func aMatchingDenyWinsOverAnyAllow() throws {
        let allowDomain = try policy(#"{"name": "mesh", "target": "orders", "from": ["spiffe://mesh.local/*"]}"#)
        let denyAdmin = try policy(
            #"{"name": "no-admin", "target": "orders", "action": "deny", "from": ["*"], "paths": ["/admin"]}"#
        )
        let table = AuthorizationTable(service: "orders", policies: [allowDomain, denyAdmin], mesh: MeshSettings())
        #expect(table.decide(source: batch, port: 1, method: "GET", path: "/orders").isAllowed)
        #expect(
            table.decide(source: batch, port: 1, method: "GET", path: "/admin/x") == .denied(reason: "policy no-admin")
        )
        #expect(!table.decide(source: foreign, port: 1, method: "GET", path: "/orders").isAllowed)
    }

    @Test func portsNarrowARule() throws {
        let tcp = try policy(#"{"name": "db", "target": "orders", "from": ["*"], "ports": [5432]}"#)
        let table = AuthorizationTable(service: "orders", policies: [tcp], mesh: MeshSettings())
        #expect(table.usesPorts)
        #expect(!AuthorizationTable(service: "orders", policies: [], mesh: MeshSettings()).usesPorts)
        #expect(table.decide(source: web, port: 5432, method: nil, path: nil).isAllowed)
        #expect(!table.decide(source: web, port: 8080, method: nil, path: nil).isAllowed)
        #expect(!table.decide(source: nil, port: 5432, method: nil, path: nil).isAllowed)
    }

    @Test func badPoliciesAreRefusedWithTheirFieldPaths() {
        do {
            _ = try AuthorizationPolicy.parse(
                #"{"name": "x", "action": "maybe", "from": ["web"], "paths": ["admin"], "methods": ["get"], "colour": 1}"#
            )
            Issue.record("a bad policy parsed")
        } catch {
            let paths = Set(error.errors.map(\.path))
            #expect(
                paths.isSuperset(of: ["target", "action", "from[0]", "paths[0]", "methods[0]", "colour"]),
                "\(paths)"
            )
        }
    }

    @Test func registryEventsForPoliciesAndMeshSettings() throws {
        var registry = Registry(now: 0)
        var p = try policy(#"{"name": "a", "target": "orders"}"#)
        let put = registry.putPolicy(p)
        #expect(put.map(\.kind) == [.policyPut])
        #expect(put[0].concerns(["orders"]) && !put[0].concerns(["web"]))
        #expect(registry.putPolicy(p).isEmpty)
        p.target = "payments"
        #expect(registry.putPolicy(p).map(\.kind) == [.policyDeleted, .policyPut])
        let mesh = registry.putMesh(MeshSettings(defaultAuthorization: .deny))
        #expect(mesh.map(\.kind) == [.meshPut])
        #expect(mesh[0].concerns(["web"]), "mesh-wide events reach every watcher")
        #expect(try registry.deletePolicy("a").map(\.kind) == [.policyDeleted])
        #expect(throws: RegistryError.notFound("policy \"a\"")) { try registry.deletePolicy("a") }

        var state = DiscoveryState()
        for event in put + mesh { state.apply(event) }
        #expect(state.policies["a"]?.target == "orders")
        #expect(state.mesh.defaultAuthorization == .deny)
        let line = String(decoding: try WatchLine.snapshotLine(state), as: UTF8.self)
        guard case .snapshot(let parsed) = try WatchLine.parse(line) else {
            Issue.record("not a snapshot")
            return
        }
        #expect(parsed == state)
    }
}

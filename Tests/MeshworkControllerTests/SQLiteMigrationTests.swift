import Foundation
import GRDB
import Logging
import MeshworkModel
import Testing

@testable import MeshworkController

/// A data directory written before documents (the registry and identity tables of v1 to
/// v8) opens with everything in it, at the revision it was at.
@Suite("SQLite store migration")
struct SQLiteMigrationTests {
    @Test func aFileFromBeforeDocumentsOpensWithEverythingInIt() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshwork-migration-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("registry.sqlite").path
        do {
            let old = try DatabaseQueue(path: path)
            var migrator = DatabaseMigrator()
            SQLiteStore.registerMigrations(&migrator)
            try migrator.migrate(old, upTo: "v8-rollout")
            try await old.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO meta (key, value) VALUES ('revision', 41);
                        INSERT INTO service (name, body) VALUES ('orders', '{"name":"orders"}');
                        INSERT INTO instance (id, service, body) VALUES ('orders-1', 'orders', '{"address":"127.0.0.1","health":"healthy","id":"orders-1","metadata":{},"port":8080,"service":"orders","ttlSeconds":30,"weight":1}');
                        INSERT INTO route (name, body) VALUES ('canary', '{"created":7,"kind":"HTTPRoute","name":"canary","parentRefs":[{"name":"orders"}],"rules":[{"backendRefs":[{"name":"orders"}]}]}');
                        INSERT INTO authority (certificates, key, state, retire_after) VALUES ('CERT', 'KEY', 'active', NULL);
                        INSERT INTO join_token (id, secret_hash, service, expires, uses_left, created) VALUES ('t1', 'abc', 'orders', 2000000000, 3, 1700000000);
                        INSERT INTO credential (hash, service, instance, expires) VALUES ('h1', 'orders', 'orders-1', 2000000000);
                        INSERT INTO revoked (serial, expires) VALUES ('0a', 2000000000);
                        """
                )
            }
            try old.close()
        }
        let store = try SQLiteStore(path: path)
        let snapshot = try store.snapshot()
        #expect(snapshot.revision == 41)
        #expect(
            snapshot.documents.map(\.key.description).sorted() == [
                "authority/active", "credential/h1", "instance/orders-1", "join-token/t1", "revoked/0a",
                "route/canary", "service/orders",
            ]
        )
        let state = try ControllerState(snapshot: snapshot)
        #expect(state.registry.services["orders"] != nil)
        #expect(state.registry.instances["orders-1"]?.port == 8080)
        // The route keeps its age; the instance with a TTL lives under a store lease.
        #expect(state.registry.routes["canary"]?.created == 7)
        let lease = try #require(state.leases["orders-1"])
        #expect(try await store.keepAlive(lease))
        let token = try #require(snapshot.documents.first { $0.key == StoreKey(.joinToken, "t1") })
        let decoded = try StoreCoding.decode(IdentityDocuments.JoinToken.self, token.body, key: token.key)
        #expect(decoded.usesLeft == 3 && decoded.service == "orders" && decoded.expires.timeIntervalSince1970 == 2e9)
        await store.close()
    }
}

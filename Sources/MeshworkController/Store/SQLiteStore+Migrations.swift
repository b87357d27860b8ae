import Foundation
import GRDB
import MeshworkModel

/// The SQLite file's schema, from the first release on: a file written by any earlier
/// version opens, and its data moves into the document table at the revision it was at.
extension SQLiteStore {
    static func registerMigrations(_ migrator: inout DatabaseMigrator) {
        // v1 to v8: the tables of the registry store that came before documents (each
        // resource as JSON in a table of its own), and the identity tables.
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE service (name TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);
                    CREATE TABLE instance (id TEXT PRIMARY KEY NOT NULL, service TEXT NOT NULL, body TEXT NOT NULL);
                    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
                    """
            )
        }
        migrator.registerMigration("v2-identity") { db in
            try db.execute(
                sql: """
                    CREATE TABLE authority (id INTEGER PRIMARY KEY AUTOINCREMENT, certificates TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL);
                    CREATE TABLE join_token (id TEXT PRIMARY KEY NOT NULL, secret_hash TEXT NOT NULL, service TEXT NOT NULL, expires REAL NOT NULL, uses_left INTEGER NOT NULL, created REAL NOT NULL);
                    CREATE TABLE credential (hash TEXT PRIMARY KEY NOT NULL, service TEXT NOT NULL, instance TEXT, expires REAL NOT NULL);
                    """
            )
        }
        migrator.registerMigration("v3-policy") { db in
            try db.execute(
                sql: """
                    CREATE TABLE policy (name TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);
                    CREATE TABLE setting (key TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL);
                    """
            )
        }
        migrator.registerMigration("v4-rotation") { db in
            try db.execute(sql: "ALTER TABLE authority ADD COLUMN retire_after REAL")
        }
        migrator.registerMigration("v5-operator-tokens") { db in
            try db.execute(
                sql: """
                    CREATE TABLE operator_token (id TEXT PRIMARY KEY NOT NULL, secret_hash TEXT NOT NULL, scope TEXT NOT NULL, expires REAL NOT NULL, created REAL NOT NULL);
                    """
            )
        }
        migrator.registerMigration("v6-revocation") { db in
            try db.execute(
                sql: """
                    CREATE TABLE issued (serial TEXT PRIMARY KEY NOT NULL, service TEXT NOT NULL, instance TEXT, token TEXT, credential TEXT NOT NULL, expires REAL NOT NULL);
                    CREATE TABLE revoked (serial TEXT PRIMARY KEY NOT NULL, expires REAL NOT NULL);
                    """
            )
        }
        migrator.registerMigration("v7-route") { db in
            try db.execute(sql: "CREATE TABLE route (name TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)")
        }
        migrator.registerMigration("v8-rollout") { db in
            try db.execute(
                sql: "CREATE TABLE rollout (name TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL)"
            )
        }
        // v9: documents (the store protocol's shape, the same as etcd's keys), and store
        // leases. The registry's resources move in at the revision the file was at; an
        // instance with a TTL gets a lease of that TTL (the old store gave it a fresh
        // in-memory lease at every start: so does this one).
        migrator.registerMigration("v9-documents") { db in
            try db.execute(
                sql: """
                    CREATE TABLE document (collection TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL, revision INTEGER NOT NULL, created INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (collection, name));
                    CREATE INDEX document_lease ON document (lease) WHERE lease != 0;
                    CREATE TABLE store_lease (id INTEGER PRIMARY KEY NOT NULL, ttl INTEGER NOT NULL);
                    """
            )
            let revision = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'revision'") ?? 0
            func insert(
                _ collection: StoreCollection,
                _ name: String,
                _ body: Data,
                created: Int64? = nil,
                lease: Int64 = 0
            )
                throws
            {
                try db.execute(
                    sql:
                        "INSERT INTO document (collection, name, body, revision, created, lease) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [collection.rawValue, name, body, revision, created ?? revision, lease]
                )
            }
            for row in try Row.fetchAll(db, sql: "SELECT name, body FROM service") {
                try insert(.service, row["name"], Data((row["body"] as String).utf8))
            }
            for row in try Row.fetchAll(db, sql: "SELECT name, body FROM policy") {
                try insert(.policy, row["name"], Data((row["body"] as String).utf8))
            }
            for row in try Row.fetchAll(db, sql: "SELECT key, body FROM setting") {
                try insert(.setting, row["key"], Data((row["body"] as String).utf8))
            }
            for row in try Row.fetchAll(db, sql: "SELECT name, body FROM route") {
                let body = Data((row["body"] as String).utf8)
                // The route's age stays the revision it was first put at.
                let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any]
                let created = (object?["created"] as? NSNumber)?.int64Value
                try insert(.route, row["name"], body, created: created.flatMap { $0 > 0 ? $0 : nil })
            }
            for row in try Row.fetchAll(db, sql: "SELECT name, body, status FROM rollout") {
                let body = String(decoding: Data((row["body"] as String).utf8), as: UTF8.self)
                let status = String(decoding: Data((row["status"] as String).utf8), as: UTF8.self)
                try insert(.rollout, row["name"], Data(#"{"rollout":\#(body),"status":\#(status)}"#.utf8))
            }
            let decoder = JSONDecoder()
            for row in try Row.fetchAll(db, sql: "SELECT id, body FROM instance") {
                let body = Data((row["body"] as String).utf8)
                var lease: Int64 = 0
                if let instance = try? decoder.decode(InstanceResource.self, from: body), instance.ttlSeconds > 0 {
                    lease = Int64.random(in: 1...Int64.max)
                    try db.execute(
                        sql: "INSERT INTO store_lease (id, ttl) VALUES (?, ?)",
                        arguments: [lease, instance.ttlSeconds]
                    )
                }
                try insert(.instance, row["id"], body, lease: lease)
            }
            try db.execute(sql: "DROP TABLE service; DROP TABLE instance; DROP TABLE policy; DROP TABLE setting")
            try db.execute(sql: "DROP TABLE route; DROP TABLE rollout")
        }
        // v10: the CA and the credentials move into documents too.
        migrator.registerMigration("v10-identity-documents") { db in
            let revision = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'revision'") ?? 0
            func insert<Value: Encodable>(_ key: StoreKey, _ value: Value) throws {
                try db.execute(
                    sql:
                        "INSERT OR REPLACE INTO document (collection, name, body, revision, created, lease) VALUES (?, ?, ?, ?, ?, 0)",
                    arguments: [
                        key.collection.rawValue, key.name, Data(try StoreCoding.encode(value)), revision, revision,
                    ]
                )
            }
            func date(_ row: Row, _ column: String) -> Date { Date(timeIntervalSince1970: row[column] ?? 0) }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM authority ORDER BY id") {
                let state: String = row["state"]
                let certificates: String = row["certificates"]
                var stored = IdentityDocuments.Authority(certificates: certificates, key: row["key"])
                switch state {
                case "active": try insert(IdentityDocuments.active, stored)
                case "next": try insert(IdentityDocuments.next, stored)
                default:
                    stored.retireAfter = date(row, "retire_after")
                    let id: Int64 = row["id"]
                    try insert(StoreKey(.authority, "retiring-\(id)"), stored)
                }
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM join_token") {
                try insert(
                    StoreKey(.joinToken, row["id"]),
                    IdentityDocuments.JoinToken(
                        secretHash: row["secret_hash"],
                        service: row["service"],
                        expires: date(row, "expires"),
                        usesLeft: row["uses_left"],
                        created: date(row, "created")
                    )
                )
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM credential") {
                try insert(
                    StoreKey(.credential, row["hash"]),
                    IdentityDocuments.Credential(
                        service: row["service"],
                        instance: row["instance"],
                        expires: date(row, "expires")
                    )
                )
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM issued") {
                try insert(
                    StoreKey(.issued, row["serial"]),
                    IdentityDocuments.Issued(
                        service: row["service"],
                        instance: row["instance"],
                        token: row["token"],
                        credential: row["credential"],
                        expires: date(row, "expires")
                    )
                )
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM revoked") {
                try insert(StoreKey(.revoked, row["serial"]), IdentityDocuments.Revoked(expires: date(row, "expires")))
            }
            for row in try Row.fetchAll(db, sql: "SELECT * FROM operator_token") {
                try insert(
                    StoreKey(.operatorToken, row["id"]),
                    IdentityDocuments.OperatorToken(
                        secretHash: row["secret_hash"],
                        scope: row["scope"],
                        expires: date(row, "expires"),
                        created: date(row, "created")
                    )
                )
            }
            try db.execute(
                sql: """
                    DROP TABLE authority; DROP TABLE join_token; DROP TABLE credential;
                    DROP TABLE issued; DROP TABLE revoked; DROP TABLE operator_token;
                    """
            )
        }
    }
}

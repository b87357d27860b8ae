import Foundation
import GRDB
import MeshworkModel

/// The registry on disk: SQLite through GRDB, one row per service and per instance (the
/// resource as JSON) and the revision. Every acknowledged change is committed before the
/// API answers, so a restart loses nothing acknowledged; heartbeats are not written
/// (leases are soft state: a restarted controller gives every instance a fresh lease).
final class RegistryStore: Sendable {
    let database: DatabaseQueue

    init(path: String) throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        database = try DatabaseQueue(path: path, configuration: configuration)
        var migrator = DatabaseMigrator()
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
        try migrator.migrate(database)
    }

    struct Contents {
        var services: [ServiceResource]
        var instances: [InstanceResource]
        var policies: [AuthorizationPolicy]
        var mesh: MeshSettings
        var routes: [HTTPRoute] = []
        var revision: Int64
    }

    func load() throws -> Contents {
        try database.read { db in
            let services = try String.fetchAll(db, sql: "SELECT body FROM service ORDER BY name").map {
                try ServiceResource.parse($0)
            }
            let decoder = JSONDecoder()
            let instances = try String.fetchAll(db, sql: "SELECT body FROM instance ORDER BY id").map {
                try decoder.decode(InstanceResource.self, from: Data($0.utf8))
            }
            let policies = try String.fetchAll(db, sql: "SELECT body FROM policy ORDER BY name").map {
                try AuthorizationPolicy.parse($0)
            }
            let mesh = try String.fetchOne(db, sql: "SELECT body FROM setting WHERE key = 'mesh'").map {
                try decoder.decode(MeshSettings.self, from: Data($0.utf8))
            }
            let routes = try String.fetchAll(db, sql: "SELECT body FROM route ORDER BY name").map {
                try HTTPRoute.parse($0, storedBefore: true)
            }
            let revision = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'revision'") ?? 0
            return Contents(
                services: services,
                instances: instances,
                policies: policies,
                mesh: mesh ?? MeshSettings(),
                routes: routes,
                revision: revision
            )
        }
    }

    /// Writes the effect of `events` in one transaction.
    func apply(_ events: [RegistryEvent]) throws {
        guard let last = events.last else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try database.write { db in
            for event in events {
                switch event.kind {
                case .servicePut:
                    guard let service = event.service else { continue }
                    let body = String(decoding: try encoder.encode(service), as: UTF8.self)
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO service (name, body) VALUES (?, ?)",
                        arguments: [service.name, body]
                    )
                case .serviceDeleted:
                    guard let service = event.service else { continue }
                    try db.execute(sql: "DELETE FROM service WHERE name = ?", arguments: [service.name])
                case .instancePut:
                    guard let instance = event.instance else { continue }
                    let body = String(decoding: try encoder.encode(instance), as: UTF8.self)
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO instance (id, service, body) VALUES (?, ?, ?)",
                        arguments: [instance.id, instance.service, body]
                    )
                case .instanceDeleted:
                    guard let instance = event.instance else { continue }
                    try db.execute(sql: "DELETE FROM instance WHERE id = ?", arguments: [instance.id])
                case .policyPut:
                    guard let policy = event.policy else { continue }
                    let body = String(decoding: try encoder.encode(policy), as: UTF8.self)
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO policy (name, body) VALUES (?, ?)",
                        arguments: [policy.name, body]
                    )
                case .policyDeleted:
                    guard let policy = event.policy else { continue }
                    try db.execute(sql: "DELETE FROM policy WHERE name = ?", arguments: [policy.name])
                case .meshPut:
                    guard let mesh = event.mesh else { continue }
                    let body = String(decoding: try encoder.encode(mesh), as: UTF8.self)
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO setting (key, body) VALUES ('mesh', ?)",
                        arguments: [body]
                    )
                case .routePut:
                    guard let route = event.route else { continue }
                    let body = String(decoding: try encoder.encode(route), as: UTF8.self)
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO route (name, body) VALUES (?, ?)",
                        arguments: [route.name, body]
                    )
                case .routeDeleted:
                    // (A route that lost a parent is deleted and put again in one commit.)
                    guard let route = event.route else { continue }
                    try db.execute(sql: "DELETE FROM route WHERE name = ?", arguments: [route.name])
                }
            }
            try db.execute(
                sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)",
                arguments: [last.revision]
            )
        }
    }

    // MARK: rollouts (not registry events: watchers never see them, only their routes)

    func loadRollouts() throws -> [RolloutEntry] {
        try database.read { db in
            let decoder = JSONDecoder()
            return try Row.fetchAll(db, sql: "SELECT body, status FROM rollout ORDER BY name").map { row in
                let body: String = row["body"]
                let status: String = row["status"]
                return RolloutEntry(
                    rollout: try Rollout.parse(body),
                    status: try decoder.decode(RolloutStatus.self, from: Data(status.utf8))
                )
            }
        }
    }

    /// Commits a rollout and where it is, before the API answers or the route is written.
    func saveRollout(_ entry: RolloutEntry) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let body = String(decoding: try encoder.encode(entry.rollout), as: UTF8.self)
        let status = String(decoding: try encoder.encode(entry.status), as: UTF8.self)
        try database.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO rollout (name, body, status) VALUES (?, ?, ?)",
                arguments: [entry.rollout.name, body, status]
            )
        }
    }

    func deleteRollout(_ name: String) throws {
        try database.write { db in try db.execute(sql: "DELETE FROM rollout WHERE name = ?", arguments: [name]) }
    }
}

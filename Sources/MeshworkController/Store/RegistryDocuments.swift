import Foundation
import MeshworkModel

/// How each registry resource is kept as a store document: its JSON (the shape the API
/// serves), read back with the same readers as the API's input, leniently where a newer
/// controller may have stored fields an older reader refuses (`storedBefore`).
enum RegistryDocuments {
    static func key(service name: String) -> StoreKey { StoreKey(.service, name) }
    static func key(instance id: String) -> StoreKey { StoreKey(.instance, id) }
    static func key(policy name: String) -> StoreKey { StoreKey(.policy, name) }
    static func key(route name: String) -> StoreKey { StoreKey(.route, name) }
    static func key(setting name: String) -> StoreKey { StoreKey(.setting, name) }
    static func key(rollout name: String) -> StoreKey { StoreKey(.rollout, name) }

    static func service(_ body: [UInt8], key: StoreKey) throws -> ServiceResource {
        try read(key) { try ServiceResource.parse(String(decoding: body, as: UTF8.self)) }
    }

    static func instance(_ body: [UInt8], key: StoreKey) throws -> InstanceResource {
        try StoreCoding.decode(InstanceResource.self, body, key: key)
    }

    static func policy(_ body: [UInt8], key: StoreKey) throws -> AuthorizationPolicy {
        try read(key) { try AuthorizationPolicy.parse(String(decoding: body, as: UTF8.self)) }
    }

    /// A route, its age the document's creation revision (the same on every controller).
    static func route(_ body: [UInt8], key: StoreKey, created: Int64) throws -> HTTPRoute {
        var route = try read(key) { try HTTPRoute.parse(String(decoding: body, as: UTF8.self), storedBefore: true) }
        route.created = created
        return route
    }

    static func mesh(_ body: [UInt8], key: StoreKey) throws -> MeshSettings {
        try StoreCoding.decode(MeshSettings.self, body, key: key)
    }

    /// A rollout and where it is: `{"rollout": ..., "status": ...}`.
    static func rollout(_ body: [UInt8], key: StoreKey) throws -> RolloutEntry {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let spec = object["rollout"], let status = object["status"],
            let specData = try? JSONSerialization.data(withJSONObject: spec),
            let statusData = try? JSONSerialization.data(withJSONObject: status)
        else { throw StoreError(.corrupt, "the stored \(key) is not a rollout") }
        let rollout = try read(key) { try Rollout.parse(String(decoding: specData, as: UTF8.self)) }
        return RolloutEntry(
            rollout: rollout,
            status: try StoreCoding.decode(RolloutStatus.self, Array(statusData), key: key)
        )
    }

    static func rolloutBody(_ entry: RolloutEntry) throws -> [UInt8] {
        let spec = try StoreCoding.encode(entry.rollout)
        let status = try StoreCoding.encode(entry.status)
        return Array(#"{"rollout":"#.utf8) + spec + Array(#","status":"#.utf8) + status + [UInt8(ascii: "}")]
    }

    private static func read<T>(_ key: StoreKey, _ parse: () throws -> T) throws -> T {
        do {
            return try parse()
        } catch {
            throw StoreError(.corrupt, "the stored \(key) is not readable: \(error)")
        }
    }
}

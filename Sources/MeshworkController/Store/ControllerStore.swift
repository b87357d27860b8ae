import Foundation

/// Where the controller keeps what it must not lose: services, instances, policies,
/// routes, rollouts, the CA and every credential, as documents (a collection, a name, a
/// JSON body) at revisions.
///
/// One protocol, two implementations, one contract test suite run against both
/// (`ControllerStoreTests`):
/// - `SQLiteStore`: embedded, one controller, nothing to install (the default);
/// - `EtcdStore`: several controllers share one etcd cluster.
///
/// The contract:
/// - `commit` is atomic: every operation lands at one new revision, or none does; it lands
///   only if every condition holds (`StoreError.conflict` otherwise), and only while the
///   term it is fenced by still leads (`StoreError.fenced`).
/// - Revisions only grow, across processes too: the revision a commit returns is greater
///   than any revision a `load` or `changes` stream has shown before it. A commit that
///   changes nothing (its deletes find nothing) makes no revision and returns 0: there is
///   nothing to wait for.
/// - A write holds at most `StoreWrite.maxOperations` operations and as many conditions
///   (etcd's `--max-txn-ops` default); a larger one is refused (`StoreError.tooLarge`)
///   before anything is sent, so a caller splits it.
/// - `changes(after:)` delivers every commit after a revision in order, whoever made it,
///   lease expiries included, each exactly once.
/// - A document put under a lease is deleted (once, as a change of its own) when the lease
///   is not kept alive within its TTL. A process that stops keeps nothing alive.
/// - `campaign` returns when the caller leads; it leads until its lease ends, and a fenced
///   write after that is refused.
package protocol ControllerStore: AnyObject, Sendable {
    /// Every document, and the revision they are at.
    func load() async throws -> StoreSnapshot

    /// Commits `write` atomically; the revision it made.
    func commit(_ write: StoreWrite) async throws -> Int64

    /// Every commit after `revision`, in order, as it happens. Ends with an error when it
    /// must be opened again (from the last revision seen); `StoreError.compacted` when the
    /// history no longer reaches back that far (load again).
    func changes(after revision: Int64) -> AsyncThrowingStream<StoreChanges, any Error>

    /// A lease of `ttl` whole seconds (at least one); its id.
    func grantLease(ttl: Int64) async throws -> Int64

    /// Renews a lease; false when it is gone (expired or revoked): its documents are too.
    func keepAlive(_ lease: Int64) async throws -> Bool

    /// Ends a lease now, deleting its documents.
    func revokeLease(_ lease: Int64) async throws

    /// Waits until this process leads as `candidate` under `lease`; the term it leads in.
    /// The term ends with the lease.
    func campaign(candidate: String, lease: Int64) async throws -> StoreTerm

    /// Who leads now (nil: nobody).
    func leader() async throws -> String?

    func close() async
}

/// The kinds of documents.
package enum StoreCollection: String, Sendable, CaseIterable, Codable {
    case service, instance, policy, setting, route, rollout
    case authority
    case joinToken = "join-token"
    case credential, issued, revoked
    case revokedScope = "revoked-scope"
    case operatorToken = "operator-token"
    /// The elected leader's document (under its lease).
    case leader
    /// Each controller's API URL (`member/<name>`, under its election lease): where a
    /// follower relays telemetry to the leader.
    case member
}

package struct StoreKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    package var collection: StoreCollection
    package var name: String

    package init(_ collection: StoreCollection, _ name: String) {
        self.collection = collection
        self.name = name
    }

    package static func < (lhs: StoreKey, rhs: StoreKey) -> Bool {
        (lhs.collection.rawValue, lhs.name) < (rhs.collection.rawValue, rhs.name)
    }

    package var description: String { "\(collection.rawValue)/\(name)" }
}

package struct StoreDocument: Hashable, Sendable {
    package var key: StoreKey
    package var body: [UInt8]
    /// The revision it was last put at.
    package var revision: Int64
    /// The revision it was first put at (since it last did not exist): its age.
    package var created: Int64
    /// The lease it lives under (0: none).
    package var lease: Int64

    package init(key: StoreKey, body: [UInt8], revision: Int64, created: Int64, lease: Int64 = 0) {
        self.key = key
        self.body = body
        self.revision = revision
        self.created = created
        self.lease = lease
    }
}

package struct StoreSnapshot: Sendable {
    package var documents: [StoreDocument]
    package var revision: Int64

    package func documents(in collection: StoreCollection) -> [StoreDocument] {
        documents.filter { $0.key.collection == collection }
    }
}

/// What one commit does: conditions, then operations, at one revision.
package struct StoreWrite: Sendable {
    package enum Condition: Sendable, Hashable {
        /// The document does not exist.
        case absent(StoreKey)
        /// The document was last put at `revision` (0: it does not exist).
        case unchanged(StoreKey, since: Int64)
    }

    package enum Operation: Sendable, Hashable {
        case put(StoreKey, [UInt8], lease: Int64 = 0)
        case delete(StoreKey)

        var key: StoreKey {
            switch self {
            case .put(let key, _, _), .delete(let key): return key
            }
        }
    }

    /// etcd refuses a transaction with more than 128 compares or operations on a side
    /// (`--max-txn-ops`, default 128); both stores keep to it, so a write that would only
    /// fail on etcd fails in every test.
    package static let maxOperations = 128

    package var conditions: [Condition] = []
    package var operations: [Operation] = []

    /// Refuses a write etcd would (`maxOperations`); the fence is one compare more.
    package func checkSize() throws {
        let compares = conditions.count + (fence == nil ? 0 : 1)
        guard operations.count <= Self.maxOperations, compares <= Self.maxOperations else {
            throw StoreError(
                .tooLarge,
                "a write of \(operations.count) operations and \(compares) conditions (at most \(Self.maxOperations) each)"
            )
        }
    }
    /// The leader term the write belongs to: refused when that term no longer leads.
    package var fence: StoreTerm?

    package init(conditions: [Condition] = [], operations: [Operation] = [], fence: StoreTerm? = nil) {
        self.conditions = conditions
        self.operations = operations
        self.fence = fence
    }

    package mutating func put(_ key: StoreKey, _ body: [UInt8], lease: Int64 = 0) {
        operations.append(.put(key, body, lease: lease))
    }

    package mutating func put<Value: Encodable>(_ key: StoreKey, json value: Value, lease: Int64 = 0) throws {
        operations.append(.put(key, try StoreCoding.encode(value), lease: lease))
    }

    package mutating func delete(_ key: StoreKey) { operations.append(.delete(key)) }

    /// `groups` of operations as writes of at most `maxOperations` each, in order; the
    /// operations of one group always land together (a group is at most `maxOperations`).
    package static func split(_ groups: [[Operation]]) -> [StoreWrite] {
        var writes: [StoreWrite] = []
        var current = StoreWrite()
        for group in groups where !group.isEmpty {
            if current.operations.count + group.count > maxOperations {
                writes.append(current)
                current = StoreWrite()
            }
            current.operations += group
        }
        if !current.operations.isEmpty { writes.append(current) }
        return writes
    }
}

/// One change of a commit, as `changes` delivers it.
package struct StoreChange: Hashable, Sendable {
    package var key: StoreKey
    /// The new body; nil when the document was deleted.
    package var body: [UInt8]?
    package var lease: Int64
    /// The revision the document was first put at (0 for a deletion).
    package var created: Int64

    package init(key: StoreKey, body: [UInt8]?, lease: Int64 = 0, created: Int64 = 0) {
        self.key = key
        self.body = body
        self.lease = lease
        self.created = created
    }
}

/// The changes of one commit (or one lease expiry), at its revision.
package struct StoreChanges: Sendable, Hashable {
    package var revision: Int64
    package var changes: [StoreChange]
}

/// A leadership term: who leads, and the revision it began at (the fence).
package struct StoreTerm: Sendable, Hashable {
    package var candidate: String
    package var revision: Int64
    package var lease: Int64
}

/// Why a store call failed.
package struct StoreError: Error, Hashable, Sendable, CustomStringConvertible {
    package enum Code: Hashable, Sendable {
        /// A condition did not hold (someone else changed the document first).
        case conflict
        /// The term the write was fenced by no longer leads.
        case fenced
        /// The store cannot be reached, or cannot commit (no quorum): the write may or may
        /// not have landed (the message says which is known).
        case unavailable
        /// The history after the revision asked for is gone.
        case compacted
        /// The stored data is not what this version reads.
        case corrupt
        /// The write has more operations than a store commits at once (a caller's bug:
        /// it splits the write).
        case tooLarge
    }

    package var code: Code
    package var message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { message }
}

/// Documents are JSON, keys sorted (so equal values are equal bytes).
package enum StoreCoding {
    package static func encode<Value: Encodable>(_ value: Value) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.dateEncodingStrategy = .secondsSince1970
        return Array(try encoder.encode(value))
    }

    package static func decode<Value: Decodable>(_ type: Value.Type, _ body: [UInt8], key: StoreKey) throws -> Value {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        do {
            return try decoder.decode(type, from: Data(body))
        } catch {
            throw StoreError(.corrupt, "the stored \(key) is not readable: \(error)")
        }
    }
}

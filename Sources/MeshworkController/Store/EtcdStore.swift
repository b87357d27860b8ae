import Foundation
import Logging

/// The shared store: documents as etcd keys (`<prefix>/<collection>/<name>`), commits as
/// etcd transactions, revisions etcd's own (one per transaction, monotonic across every
/// controller), leases etcd's leases, and the leader an etcd key under the leader's lease.
///
/// A fenced write compares the leader key's create revision with the term's: a leader
/// paused past its lease (SIGSTOP, a long GC, a partition) finds a key created later by
/// another leader, or none, and its write does not land (etcd's own recipe for fencing
/// tokens, as in `concurrency.Election` with `IsOwner` compares).
package final class EtcdStore: ControllerStore {
    let client: EtcdClient
    let prefix: String

    package init(client: EtcdClient, prefix: String = "/meshwork") {
        self.client = client
        self.prefix = prefix
    }

    private func path(_ key: StoreKey) -> String { "\(prefix)/\(key.collection.rawValue)/\(key.name)" }

    private func key(_ path: String) -> StoreKey? {
        guard path.hasPrefix(prefix + "/") else { return nil }
        let rest = path.dropFirst(prefix.count + 1)
        guard let slash = rest.firstIndex(of: "/"), let collection = StoreCollection(rawValue: String(rest[..<slash]))
        else { return nil }
        return StoreKey(collection, String(rest[rest.index(after: slash)...]))
    }

    private var leaderPath: String { path(StoreKey(.leader, "leader")) }

    package func load() async throws -> StoreSnapshot {
        let (keyValues, revision) = try await Self.mapped { try await self.client.rangePrefix(self.prefix + "/") }
        let documents = keyValues.compactMap { keyValue in
            key(keyValue.key).map {
                StoreDocument(
                    key: $0,
                    body: keyValue.value,
                    revision: keyValue.modRevision,
                    created: keyValue.createRevision,
                    lease: keyValue.lease
                )
            }
        }
        return StoreSnapshot(documents: documents, revision: revision)
    }

    package func commit(_ write: StoreWrite) async throws -> Int64 {
        try write.checkSize()
        var compares: [EtcdClient.Compare] = []
        if let fence = write.fence {
            compares.append(EtcdClient.Compare(leaderPath, .equal, .createRevision(fence.revision)))
        }
        for condition in write.conditions {
            switch condition {
            case .absent(let key): compares.append(EtcdClient.Compare(path(key), .equal, .createRevision(0)))
            case .unchanged(let key, let since):
                compares.append(EtcdClient.Compare(path(key), .equal, .modRevision(since)))
            }
        }
        let operations: [EtcdClient.Operation] = write.operations.map { operation in
            switch operation {
            case .put(let key, let body, let lease): return .put(key: path(key), value: body, lease: lease)
            case .delete(let key): return .delete(key: path(key))
            }
        }
        let result = try await Self.mapped {
            try await self.client.transaction(
                if: compares,
                then: operations,
                else: write.fence == nil ? [] : [.range(key: self.leaderPath)]
            )
        }
        guard result.succeeded else {
            if let fence = write.fence, result.ranges.first?.first?.createRevision != fence.revision {
                throw StoreError(
                    .fenced,
                    "the term of \(fence.candidate) that began at \(fence.revision) no longer leads"
                )
            }
            throw StoreError(.conflict, "a document the write depends on changed")
        }
        // Nothing changed, so no revision was made: the one etcd answers is the cluster's,
        // perhaps of a key outside the prefix that no watch of ours will show.
        return result.changed ? result.revision : 0
    }

    package func changes(after revision: Int64) -> AsyncThrowingStream<StoreChanges, any Error> {
        let (stream, continuation) = AsyncThrowingStream<StoreChanges, any Error>.makeStream()
        let watch = client.watch(prefix: prefix + "/", after: revision)
        let task = Task {
            do {
                for try await response in watch {
                    // One response may hold several revisions: a commit is the run of
                    // events that share one.
                    var batch: StoreChanges?
                    for event in response.events {
                        guard let key = key(event.keyValue.key) else { continue }
                        let change = StoreChange(
                            key: key,
                            body: event.kind == .delete ? nil : event.keyValue.value,
                            lease: event.keyValue.lease,
                            created: event.keyValue.createRevision
                        )
                        if batch?.revision == event.keyValue.modRevision {
                            batch?.changes.append(change)
                        } else {
                            if let batch { continuation.yield(batch) }
                            batch = StoreChanges(revision: event.keyValue.modRevision, changes: [change])
                        }
                    }
                    if let batch { continuation.yield(batch) }
                }
                continuation.finish(throwing: StoreError(.unavailable, "the etcd watch ended"))
            } catch {
                continuation.finish(throwing: Self.storeError(error))
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    package func grantLease(ttl: Int64) async throws -> Int64 {
        try await Self.mapped { try await self.client.grantLease(ttl: max(1, ttl)) }
    }

    package func keepAlive(_ lease: Int64) async throws -> Bool {
        try await Self.mapped { try await self.client.keepAlive(lease) } > 0
    }

    package func revokeLease(_ lease: Int64) async throws {
        try await Self.mapped { try await self.client.revokeLease(lease) }
    }

    package func campaign(candidate: String, lease: Int64) async throws -> StoreTerm {
        while true {
            let result = try await Self.mapped {
                try await self.client.transaction(
                    if: [EtcdClient.Compare(self.leaderPath, .equal, .createRevision(0))],
                    then: [.put(key: self.leaderPath, value: Array(candidate.utf8), lease: lease)],
                    else: [.range(key: self.leaderPath)]
                )
            }
            if result.succeeded { return StoreTerm(candidate: candidate, revision: result.revision, lease: lease) }
            if let current = result.ranges.first?.first, current.lease == lease {
                // Ours already (an earlier attempt landed but its answer was lost).
                return StoreTerm(candidate: candidate, revision: current.createRevision, lease: lease)
            }
            guard try await keepAlive(lease) else { throw StoreError(.fenced, "lease \(lease) is gone") }
            // Someone else leads: wait for its key to go (its lease ended or it resigned).
            do {
                for try await response in client.watch(prefix: leaderPath, after: result.revision)
                where response.events.contains(where: { $0.kind == .delete && $0.keyValue.key == leaderPath }) {
                    break
                }
            } catch let error as EtcdError where error.code == .unavailable {
                // The watch broke: look again.
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    package func leader() async throws -> String? {
        let (keyValues, _, _) = try await Self.mapped { try await self.client.range(self.leaderPath) }
        return keyValues.first.map { String(decoding: $0.value, as: UTF8.self) }
    }

    package func close() async {
        await client.shutdown()
    }

    // MARK: errors

    private static func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw storeError(error)
        }
    }

    static func storeError(_ error: any Error) -> any Error {
        if error is CancellationError || error is StoreError { return error }
        guard let etcd = error as? EtcdError else {
            return StoreError(.unavailable, "etcd: \(error)")
        }
        switch etcd.code {
        case .compacted: return StoreError(.compacted, etcd.description)
        case .server where etcd.message.contains("lease not found"): return StoreError(.conflict, etcd.description)
        case .malformed: return StoreError(.corrupt, etcd.description)
        case .server where etcd.message.contains("too many operations"): return StoreError(.tooLarge, etcd.description)
        default: return StoreError(.unavailable, etcd.description)
        }
    }
}

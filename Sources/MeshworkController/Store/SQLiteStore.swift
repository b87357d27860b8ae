import Foundation
import GRDB
import MeshworkModel
import Synchronization

/// The embedded store: documents in one SQLite file (GRDB, write-ahead log), committed
/// with `synchronous = FULL` before a commit returns. One process owns the file.
///
/// Leases are kept the way etcd keeps them, so the controller above cannot tell the two
/// apart: their TTLs are stored, their deadlines are in memory, and a reopened store gives
/// every lease a fresh TTL (as etcd's new leader does), so instances whose sidecars still
/// heartbeat survive a restart. An expired lease's documents are deleted in one commit of
/// their own. Leadership is this process's alone and kept in memory: a term ends with its
/// lease, and a fenced write checks it under the same lock as the commit.
package final class SQLiteStore: ControllerStore {
    let database: DatabaseQueue
    private let state: Mutex<State>
    private let sweeper: Mutex<Task<Void, Never>?> = Mutex(nil)
    private let clock = ContinuousClock()
    /// Commits kept in memory for `changes(after:)` from a revision already passed: at
    /// most this many, and at most `historyBytes` of document bodies (a watcher further
    /// behind reads the store whole again).
    static let historyLimit = 4096
    static let historyBytes = 64 << 20

    /// Commits waiting for the writer, and whether it is draining them.
    private struct CommitQueue {
        var commits: [QueuedCommit] = []
        var draining = false
    }

    private struct QueuedCommit {
        let write: StoreWrite
        let done: CheckedContinuation<Int64, any Error>
    }

    /// The one thread that writes the file (group commit: the commits that queue while
    /// one transaction is being made durable go in the next one, so concurrent writers
    /// share an fsync; and no fsync blocks a task of the cooperative pool).
    private let writer = DispatchQueue(label: "meshwork.sqlite-store.writer")
    private let queue = Mutex(CommitQueue())
    /// Commits in one transaction at most.
    static let maxBatch = 256
    /// Transactions the writer made for commits (each one fsync): fewer than the commits
    /// when they came together.
    package let commitTransactions = Atomic<Int>(0)

    private typealias Subscriber = (
        after: Int64, continuation: AsyncThrowingStream<StoreChanges, any Error>.Continuation
    )

    private struct State {
        var revision: Int64
        var leases: [Int64: (ttl: Int64, deadline: ContinuousClock.Instant)] = [:]
        /// Leases granted and not yet stored: the next commit stores them (a lease that
        /// ends before holds no document, and needs no row).
        var unsavedLeases: [Int64: Int64] = [:]
        var history: [StoreChanges] = []
        var historySize = 0
        /// Change streams, each with the revision it began after: a stream opened from a
        /// snapshot the file had before memory caught up gets no batch twice.
        var subscribers: [UUID: Subscriber] = [:]
        var closed = false
        /// Who leads, in memory: one process owns the file, so a restarted one leads anew
        /// and leadership costs no commit (no revision).
        var leader: StoreTerm?
        var lastTerm: Int64 = 0
    }

    package init(path: String, sweepInterval: Duration = .milliseconds(250)) throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            // Write-ahead log: a commit is one append and one fsync of the log (a rollback
            // journal made four fsyncs per commit: 110 commits/s on this disk), as durable
            // with `synchronous = FULL`. The -wal and -shm files get the file's mode.
            try db.execute(sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        database = try DatabaseQueue(path: path, configuration: configuration)
        var migrator = DatabaseMigrator()
        Self.registerMigrations(&migrator)
        try migrator.migrate(database)
        let now = clock.now
        var initial = State(revision: 0)
        try database.write { db in
            initial.revision = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'revision'") ?? 0
            for row in try Row.fetchAll(db, sql: "SELECT id, ttl FROM store_lease") {
                let id: Int64 = row["id"]
                let ttl: Int64 = row["ttl"]
                initial.leases[id] = (ttl, now + .seconds(ttl))
            }
        }
        state = Mutex(initial)
        let interval = sweepInterval
        sweeper.withLock { task in
            task = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self else { return }
                    self.expireLeases()
                }
            }
        }
    }

    package func load() async throws -> StoreSnapshot { try snapshot() }

    /// `load`, without waiting (the file is local).
    /// The documents and the revision they are at, read in one read transaction (not
    /// under the lock: a batch being made durable would hold every lease renewal behind it).
    package func snapshot() throws -> StoreSnapshot {
        try database.read { db in
            let revision = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'revision'") ?? 0
            let documents = try Row.fetchAll(db, sql: "SELECT * FROM document ORDER BY collection, name").compactMap {
                row -> StoreDocument? in
                guard let collection = StoreCollection(rawValue: row["collection"]) else { return nil }
                let body: Data = row["body"]
                return StoreDocument(
                    key: StoreKey(collection, row["name"]),
                    body: Array(body),
                    revision: row["revision"],
                    created: row["created"],
                    lease: row["lease"]
                )
            }
            return StoreSnapshot(documents: documents, revision: revision)
        }
    }

    package func commit(_ write: StoreWrite) async throws -> Int64 {
        try write.checkSize()
        return try await withCheckedThrowingContinuation { done in
            let start = queue.withLock { queue -> Bool in
                queue.commits.append(QueuedCommit(write: write, done: done))
                guard !queue.draining else { return false }
                queue.draining = true
                return true
            }
            if start { writer.async { [self] in drain() } }
        }
    }

    /// The writer's loop: the commits queued meanwhile go in one transaction (one fsync),
    /// each at its own revision and with its own conditions; then the next ones.
    /// One batch per turn of the writer, so lease ends queued meanwhile are not held
    /// behind a steady stream of commits.
    private func drain() {
        let batch = queue.withLock { queue -> [QueuedCommit] in
            let count = min(queue.commits.count, Self.maxBatch)
            defer { queue.commits.removeFirst(count) }
            return Array(queue.commits.prefix(count))
        }
        let results = batch.isEmpty ? [] : commitBatch(batch.map(\.write))
        for (commit, result) in zip(batch, results) { commit.done.resume(with: result) }
        let more = queue.withLock { queue -> Bool in
            if queue.commits.isEmpty { queue.draining = false }
            return queue.draining
        }
        if more { writer.async { [self] in drain() } }
    }

    /// Commits `writes` in order in one transaction, on the writer: a write whose lease,
    /// fence or condition does not hold fails alone (its savepoint rolled back); a failed
    /// transaction fails them all. Returns each write's revision (0: it changed nothing).
    private func commitBatch(_ writes: [StoreWrite]) -> [Result<Int64, any Error>] {
        var results: [Result<Int64, any Error>?] = Array(repeating: nil, count: writes.count)
        // In memory first, under the lock: only the writer changes the revision or ends a
        // lease, so what is checked here still holds at the commit.
        let checked = state.withLock { state -> (revision: Int64, unsaved: [Int64: Int64])? in
            guard !state.closed else { return nil }
            for (index, write) in writes.enumerated() {
                if let refusal = Self.refusal(write, state, now: clock.now) { results[index] = .failure(refusal) }
            }
            return (state.revision, state.unsavedLeases)
        }
        guard let checked else { return writes.map { _ in .failure(StoreError(.unavailable, "the store is closed")) } }
        var revision = checked.revision
        var published: [StoreChanges] = []
        commitTransactions.add(1, ordering: .relaxed)
        do {
            try database.write { db in
                // Leases granted since the last commit are stored with the first one after
                // them (a document under a lease never lands without its lease's row).
                for (id, ttl) in checked.unsaved {
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO store_lease (id, ttl) VALUES (?, ?)",
                        arguments: [id, ttl]
                    )
                }
                for (index, write) in writes.enumerated() where results[index] == nil {
                    var changes: [StoreChange] = []
                    do {
                        try db.inSavepoint {
                            changes = try Self.apply(write, at: revision + 1, db)
                            return .commit
                        }
                    } catch let refusal as StoreError {
                        results[index] = .failure(refusal)
                        continue
                    }
                    // A write that changed nothing makes no revision (as on etcd).
                    guard !changes.isEmpty else {
                        results[index] = .success(0)
                        continue
                    }
                    revision += 1
                    results[index] = .success(revision)
                    published.append(StoreChanges(revision: revision, changes: changes))
                }
                if revision != checked.revision {
                    try db.execute(
                        sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)",
                        arguments: [revision]
                    )
                }
            }
        } catch {
            return results.map { result in
                if let result, case .failure = result { return result }
                return .failure(error)
            }
        }
        state.withLock { state in
            for id in checked.unsaved.keys { state.unsavedLeases[id] = nil }
            state.revision = revision
            for batch in published { publish(batch, in: &state) }
        }
        return results.map { $0 ?? .failure(StoreError(.unavailable, "not committed")) }
    }

    /// Why `write` cannot commit, from memory: a lease of it gone, or its fence's term no
    /// longer leading.
    private static func refusal(
        _ write: StoreWrite,
        _ state: State,
        now: ContinuousClock.Instant
    ) -> StoreError? {
        for case .put(_, _, let lease) in write.operations where lease != 0 {
            // Gone, or past its deadline and not yet swept: either way not alive.
            guard let current = state.leases[lease], current.deadline > now else {
                return StoreError(.conflict, "lease \(lease) is gone")
            }
        }
        if let fence = write.fence {
            guard let leader = state.leader, leader == fence, let term = state.leases[leader.lease], term.deadline > now
            else {
                return StoreError(
                    .fenced,
                    "the term of \(fence.candidate) that began at \(fence.revision) no longer leads"
                )
            }
        }
        return nil
    }

    /// Checks `write`'s conditions and applies its operations at `revision`; the changes it
    /// made (none: it changed nothing).
    private static func apply(_ write: StoreWrite, at revision: Int64, _ db: Database) throws -> [StoreChange] {
        var changes: [StoreChange] = []
        for condition in write.conditions {
            let key: StoreKey
            let expected: Int64?
            switch condition {
            case .absent(let absent):
                (key, expected) = (absent, nil)
            case .unchanged(let unchanged, let since):
                (key, expected) = (unchanged, since == 0 ? nil : since)
            }
            let current = try Int64.fetchOne(
                db,
                sql: "SELECT revision FROM document WHERE collection = ? AND name = ?",
                arguments: [key.collection.rawValue, key.name]
            )
            guard current == expected else {
                throw StoreError(
                    .conflict,
                    "\(key) changed (it is at \(current.map(String.init) ?? "nothing"))"
                )
            }
        }
        for operation in write.operations {
            switch operation {
            case .put(let key, let body, let lease):
                let created =
                    try Int64.fetchOne(
                        db,
                        sql: "SELECT created FROM document WHERE collection = ? AND name = ?",
                        arguments: [key.collection.rawValue, key.name]
                    ) ?? revision
                try db.execute(
                    sql:
                        "INSERT OR REPLACE INTO document (collection, name, body, revision, created, lease) VALUES (?, ?, ?, ?, ?, ?)",
                    arguments: [key.collection.rawValue, key.name, Data(body), revision, created, lease]
                )
                changes.append(StoreChange(key: key, body: body, lease: lease, created: created))
            case .delete(let key):
                try db.execute(
                    sql: "DELETE FROM document WHERE collection = ? AND name = ?",
                    arguments: [key.collection.rawValue, key.name]
                )
                // etcd reports a delete only for a key that was there.
                if db.changesCount > 0 { changes.append(StoreChange(key: key, body: nil)) }
            }
        }
        return changes
    }

    package func changes(after revision: Int64) -> AsyncThrowingStream<StoreChanges, any Error> {
        let (stream, continuation) = AsyncThrowingStream<StoreChanges, any Error>.makeStream()
        let id = UUID()
        // Set before the subscriber is registered: a stream ended at once still leaves.
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        state.withLock { state in
            guard !state.closed else {
                continuation.finish(throwing: StoreError(.unavailable, "the store is closed"))
                return
            }
            if revision < state.revision {
                guard let oldest = state.history.first?.revision, oldest <= revision + 1 else {
                    continuation.finish(
                        throwing: StoreError(.compacted, "the store's history no longer reaches back to \(revision)")
                    )
                    return
                }
                for batch in state.history where batch.revision > revision { continuation.yield(batch) }
            }
            state.subscribers[id] = (max(revision, state.revision), continuation)
        }
        return stream
    }

    package func grantLease(ttl: Int64) async throws -> Int64 {
        let ttl = max(1, ttl)
        return try state.withLock { state in
            guard !state.closed else { throw StoreError(.unavailable, "the store is closed") }
            var id = Int64.random(in: 1...Int64.max)
            while state.leases[id] != nil { id = Int64.random(in: 1...Int64.max) }
            // Stored by the next commit (with the documents put under it), not here: a
            // registration is one fsync, not two.
            state.unsavedLeases[id] = ttl
            state.leases[id] = (ttl, clock.now + .seconds(ttl))
            return id
        }
    }

    package func keepAlive(_ lease: Int64) async throws -> Bool {
        state.withLock { state in
            guard let current = state.leases[lease], current.deadline > clock.now else { return false }
            state.leases[lease]?.deadline = clock.now + .seconds(current.ttl)
            return true
        }
    }

    package func revokeLease(_ lease: Int64) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            writer.async { [self] in done.resume(with: Result { try end([lease]) }) }
        }
    }

    package func campaign(candidate: String, lease: Int64) async throws -> StoreTerm {
        while true {
            let outcome: StoreTerm? = try state.withLock { state in
                guard state.leases[lease] != nil else { throw StoreError(.fenced, "lease \(lease) is gone") }
                if let leader = state.leader, state.leases[leader.lease] != nil {
                    return leader.lease == lease ? leader : nil
                }
                state.lastTerm = max(state.lastTerm, state.revision) + 1
                let term = StoreTerm(candidate: candidate, revision: state.lastTerm, lease: lease)
                state.leader = term
                return term
            }
            if let outcome { return outcome }
            // Another candidate of this process leads: look again soon (its lease ends
            // within its TTL).
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    package func leader() async throws -> String? {
        state.withLock { state in
            guard let leader = state.leader, state.leases[leader.lease] != nil else { return nil }
            return leader.candidate
        }
    }

    package func close() async {
        sweeper.withLock { $0?.cancel() }
        // Finished outside the lock: a stream's termination handler takes it.
        let subscribers = state.withLock { state in
            state.closed = true
            defer { state.subscribers.removeAll() }
            return state.subscribers.values.map(\.continuation)
        }
        for continuation in subscribers {
            continuation.finish(throwing: StoreError(.unavailable, "the store is closed"))
        }
    }

    // MARK: internals

    /// Ends the leases whose deadline passed, deleting their documents.
    func expireLeases() {
        let now = clock.now
        let expired = state.withLock { state -> [Int64] in
            guard !state.closed else { return [] }
            return state.leases.filter { $0.value.deadline <= now }.map(\.key)
        }
        guard !expired.isEmpty else { return }
        writer.async { [self] in _ = try? end(expired) }
    }

    /// Forgets `leases` and deletes their documents in one commit (none when they held
    /// nothing), on the writer. A lease never stored holds no document: it is only
    /// forgotten.
    private func end(_ leases: [Int64]) throws {
        let now = clock.now
        let (base, stored) = state.withLock { state -> (Int64, [Int64]) in
            guard !state.closed else { return (state.revision, []) }
            var stored: [Int64] = []
            for lease in leases where state.leases[lease] != nil {
                if state.unsavedLeases.removeValue(forKey: lease) == nil {
                    // Kept until its documents are deleted (a failed delete is tried again
                    // by the next sweep), but past its deadline: no commit or renewal takes it.
                    stored.append(lease)
                    state.leases[lease]?.deadline = now
                } else {
                    state.leases[lease] = nil
                }
            }
            if let leader = state.leader, leases.contains(leader.lease) { state.leader = nil }
            return (state.revision, stored)
        }
        guard !stored.isEmpty else { return }
        var changes: [StoreChange] = []
        let revision = base + 1
        try database.write { db in
            for lease in stored {
                for row in try Row.fetchAll(
                    db,
                    sql: "SELECT collection, name FROM document WHERE lease = ? ORDER BY collection, name",
                    arguments: [lease]
                ) {
                    guard let collection = StoreCollection(rawValue: row["collection"]) else { continue }
                    changes.append(StoreChange(key: StoreKey(collection, row["name"]), body: nil))
                }
                try db.execute(sql: "DELETE FROM document WHERE lease = ?", arguments: [lease])
                try db.execute(sql: "DELETE FROM store_lease WHERE id = ?", arguments: [lease])
            }
            if !changes.isEmpty {
                try db.execute(
                    sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)",
                    arguments: [revision]
                )
            }
        }
        state.withLock { state in
            for lease in stored { state.leases[lease] = nil }
            guard !changes.isEmpty else { return }
            state.revision = revision
            publish(StoreChanges(revision: revision, changes: changes), in: &state)
        }
    }

    private func publish(_ batch: StoreChanges, in state: inout State) {
        state.history.append(batch)
        state.historySize += Self.size(batch)
        if state.history.count > Self.historyLimit * 2 || state.historySize > Self.historyBytes {
            var drop = max(0, state.history.count - Self.historyLimit)
            var size = state.historySize - state.history.prefix(drop).reduce(0) { $0 + Self.size($1) }
            while size > Self.historyBytes / 2, drop < state.history.count - 1 {
                size -= Self.size(state.history[drop])
                drop += 1
            }
            state.history.removeFirst(drop)
            state.historySize = size
        }
        for subscriber in state.subscribers.values where batch.revision > subscriber.after {
            subscriber.continuation.yield(batch)
        }
    }

    private static func size(_ batch: StoreChanges) -> Int {
        batch.changes.reduce(0) { $0 + ($1.body?.count ?? 0) + $1.key.name.utf8.count + 16 }
    }
}

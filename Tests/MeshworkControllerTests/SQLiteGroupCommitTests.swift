import Foundation
import Synchronization
import Testing

@testable import MeshworkController

/// The embedded store's group commit: commits that arrive together share a transaction
/// (one fsync) while each keeps its own revision and conditions; a lease is stored with the
/// first commit after it, so a document never lands without its lease.
@Suite("SQLite store: group commit")
struct SQLiteGroupCommitTests {
    private func withStore<T>(_ body: (SQLiteStore, String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshwork-gc-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("store.sqlite").path
        let store = try SQLiteStore(path: path)
        do {
            let result = try await body(store, path)
            await store.close()
            return result
        } catch {
            await store.close()
            throw error
        }
    }

    @Test func concurrentCommitsShareTransactionsAndEachKeepsItsRevisionAndConditions() async throws {
        try await withStore { store, _ in
            let base = try await store.load().revision
            let transactions = store.commitTransactions.load(ordering: .relaxed)
            // 200 writes of their own keys, and 20 that each want one key to be absent.
            let results = await withTaskGroup(of: (Int, Result<Int64, any Error>).self) { group in
                for index in 0..<220 {
                    group.addTask {
                        var write = StoreWrite()
                        if index < 200 {
                            write.put(StoreKey(.instance, "i-\(index)"), Array("{\"n\":\(index)}".utf8))
                        } else {
                            write.conditions.append(.absent(StoreKey(.service, "contended")))
                            write.put(StoreKey(.service, "contended"), Array("{\"by\":\(index)}".utf8))
                        }
                        do {
                            return (index, .success(try await store.commit(write)))
                        } catch {
                            return (index, .failure(error))
                        }
                    }
                }
                var all: [Int: Result<Int64, any Error>] = [:]
                for await (index, result) in group { all[index] = result }
                return all
            }
            let revisions = (0..<200).compactMap { try? results[$0]?.get() }
            #expect(revisions.count == 200, "every plain write landed")
            let contended = (200..<220).compactMap { try? results[$0]?.get() }
            #expect(contended.count == 1, "exactly one conditional put of the same key landed")
            let all = (revisions + contended).sorted()
            #expect(all == Array((base + 1)...(base + 201)), "one revision each, none shared, none skipped")
            let used = store.commitTransactions.load(ordering: .relaxed) - transactions
            #expect(used < 220, "\(used) transactions for 220 concurrent commits")
            // The change stream has each write whole, in revision order.
            var seen: [Int64] = []
            for try await batch in store.changes(after: base) {
                #expect(batch.changes.count == 1)
                seen.append(batch.revision)
                if seen.count == 201 { break }
            }
            #expect(seen == all)
            let snapshot = try await store.load()
            #expect(snapshot.revision == base + 201)
            #expect(snapshot.documents(in: .instance).count == 200)
        }
    }

    /// A snapshot taken while batches commit is at the revision of its documents, and a
    /// change stream opened from it gets each later batch once, in order (what a controller
    /// does when it reads the store whole again).
    @Test func aSnapshotDuringCommitsIsAtItsDocumentsRevisionAndItsStreamRepeatsNothing() async throws {
        try await withStore { store, _ in
            let writers = Task {
                // 20 writers of 50 commits each: about 50 transactions of about 20.
                await withTaskGroup(of: Void.self) { group in
                    for writer in 0..<20 {
                        group.addTask {
                            for index in 0..<50 {
                                var write = StoreWrite()
                                write.put(StoreKey(.instance, "i-\(writer)-\(index)"), Array("{}".utf8))
                                _ = try? await store.commit(write)
                            }
                        }
                    }
                }
            }
            var checked = 0
            while checked < 20 {
                let snapshot = try await store.load()
                let newest = snapshot.documents.map(\.revision).max() ?? 0
                #expect(newest == snapshot.revision, "documents up to \(newest) at revision \(snapshot.revision)")
                #expect(snapshot.documents.count == Int(snapshot.revision), "one document per revision here")
                if snapshot.revision >= 1000 { break }
                // The stream from the snapshot: the next batches, each once.
                var next = snapshot.revision
                for try await batch in store.changes(after: snapshot.revision) {
                    #expect(batch.revision == next + 1, "after \(next) came \(batch.revision)")
                    next = batch.revision
                    if next >= min(1000, snapshot.revision + 5) { break }
                }
                checked += 1
            }
            await writers.value
        }
    }

    @Test func aLeaseIsStoredWithTheFirstCommitUnderItAndOutlivesARestart() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshwork-gc-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("store.sqlite").path
        let store = try SQLiteStore(path: path)
        let lease = try await store.grantLease(ttl: 1)
        var write = StoreWrite()
        write.put(StoreKey(.instance, "orders-1"), Array(#"{"id":"orders-1"}"#.utf8), lease: lease)
        _ = try await store.commit(write)
        // Granted after the last commit and revoked: never stored, never restored.
        let unused = try await store.grantLease(ttl: 1)
        try await store.revokeLease(unused)
        await store.close()

        // Reopened: the document and its lease are there (a fresh TTL), and the lease
        // still ends it when nothing keeps it alive.
        let reopened = try SQLiteStore(path: path, sweepInterval: .milliseconds(50))
        let snapshot = try await reopened.load()
        #expect(snapshot.documents(in: .instance).map(\.lease) == [lease])
        #expect(try await reopened.keepAlive(lease))
        #expect(try await !reopened.keepAlive(unused), "a lease revoked before any commit stored it is not restored")
        var gone = false
        for _ in 0..<100 where !gone {
            try await Task.sleep(for: .milliseconds(50))
            gone = try await reopened.load().documents(in: .instance).isEmpty
        }
        #expect(gone, "the restored lease did not end its document")
        await reopened.close()
    }
}

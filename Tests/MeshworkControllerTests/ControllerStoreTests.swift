import Foundation
import Logging
import Testing

@testable import MeshworkController

/// The store contract (`ControllerStore.swift`), the same tests against both
/// implementations: the embedded SQLite file and a real 3-member etcd cluster
/// (`scripts/etcd-cluster`).
@Suite("Controller store contract", .serialized)
struct ControllerStoreTests {
    enum Backend: String, CaseIterable, CustomTestStringConvertible {
        case sqlite, etcd
        var testDescription: String { rawValue }
    }

    static let service = StoreKey(.service, "orders")
    static let instance = StoreKey(.instance, "orders-1")

    @Test(arguments: Backend.allCases)
    func aCommitLandsWholeAtOneRevisionAndLoadReadsItBack(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, _ in
            let before = try await store.load().revision
            var write = StoreWrite()
            write.put(Self.service, Array(#"{"name":"orders"}"#.utf8))
            write.put(Self.instance, Array(#"{"id":"orders-1"}"#.utf8))
            let revision = try await store.commit(write)
            #expect(revision > before)
            let snapshot = try await store.load()
            #expect(snapshot.revision == revision)
            #expect(snapshot.documents.map(\.key) == [Self.instance, Self.service])
            #expect(snapshot.documents.allSatisfy { $0.revision == revision })
            #expect(snapshot.documents(in: .service).first?.body == Array(#"{"name":"orders"}"#.utf8))
            // An update keeps the document's age.
            var update = StoreWrite()
            update.put(Self.service, Array(#"{"name":"orders","v":2}"#.utf8))
            let updated = try await store.commit(update)
            let service = try await store.load().documents(in: .service).first
            #expect(service?.revision == updated && service?.created == revision)

            var delete = StoreWrite()
            delete.delete(Self.instance)
            let later = try await store.commit(delete)
            #expect(later > revision)
            #expect(try await store.load().documents.map(\.key) == [Self.service])
        }
    }

    @Test(arguments: Backend.allCases)
    func aWriteWhoseConditionFailsLandsNothing(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, _ in
            var first = StoreWrite(conditions: [.absent(Self.service)])
            first.put(Self.service, [1])
            let revision = try await store.commit(first)
            // Absent no longer holds.
            var again = StoreWrite(conditions: [.absent(Self.service)])
            again.put(Self.service, [2])
            again.put(Self.instance, [2])
            await expectStoreError(.conflict) { try await store.commit(again) }
            // Unchanged since the revision it was put at holds; since another does not.
            var stale = StoreWrite(conditions: [.unchanged(Self.service, since: revision - 1)])
            stale.put(Self.service, [3])
            await expectStoreError(.conflict) { try await store.commit(stale) }
            var fresh = StoreWrite(conditions: [.unchanged(Self.service, since: revision)])
            fresh.put(Self.service, [4])
            let next = try await store.commit(fresh)
            let snapshot = try await store.load()
            #expect(snapshot.documents.map(\.body) == [[4]])
            #expect(snapshot.documents.first?.revision == next)
            // `unchanged(since: 0)` is "absent".
            var absent = StoreWrite(conditions: [.unchanged(Self.instance, since: 0)])
            absent.put(Self.instance, [5])
            _ = try await store.commit(absent)
        }
    }

    @Test(arguments: Backend.allCases)
    func changesDeliverEveryCommitInOrderFromARevision(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, _ in
            let start = try await store.load().revision
            var revisions: [Int64] = []
            for value in 1...3 {
                var write = StoreWrite()
                write.put(StoreKey(.route, "r\(value)"), [UInt8(value)])
                if value == 3 { write.delete(StoreKey(.route, "r1")) }
                revisions.append(try await store.commit(write))
            }
            // From before the first: all three, then a live one.
            let stream = store.changes(after: start)
            var live = StoreWrite()
            live.put(StoreKey(.route, "r4"), [4])
            revisions.append(try await store.commit(live))
            var seen: [StoreChanges] = []
            for try await batch in stream {
                seen.append(batch)
                if seen.count == 4 { break }
            }
            #expect(seen.map(\.revision) == revisions)
            #expect(seen[2].changes.map(\.summary) == ["route/r3=[3]", "route/r1 deleted"])
            #expect(seen[3].changes.map(\.summary) == ["route/r4=[4]"])
            // A document's age is the revision it was first put at.
            #expect(seen[2].changes.first?.created == revisions[2])
            // From the second: only what came after it.
            var resumed: [Int64] = []
            for try await batch in store.changes(after: revisions[1]) {
                resumed.append(batch.revision)
                if resumed.count == 2 { break }
            }
            #expect(resumed == Array(revisions[2...]))
        }
    }

    @Test(arguments: Backend.allCases)
    func aLeaseNotKeptAliveDeletesItsDocumentsOnce(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, _ in
            let kept = try await store.grantLease(ttl: 2)
            let dropped = try await store.grantLease(ttl: 1)
            var write = StoreWrite()
            write.put(StoreKey(.instance, "kept"), [1], lease: kept)
            write.put(StoreKey(.instance, "dropped-1"), [1], lease: dropped)
            write.put(StoreKey(.instance, "dropped-2"), [1], lease: dropped)
            let revision = try await store.commit(write)
            let changes = store.changes(after: revision)
            let keeper = Task {
                while !Task.isCancelled {
                    _ = try? await store.keepAlive(kept)
                    try? await Task.sleep(for: .milliseconds(300))
                }
            }
            defer { keeper.cancel() }
            var deletions: [StoreKey] = []
            // etcd checks leases every 500 ms; a 1 s lease is gone within about 2 s.
            let deadline = ContinuousClock.now + .seconds(8)
            for try await batch in changes {
                deletions += batch.changes.filter { $0.body == nil }.map(\.key)
                if deletions.count >= 2 || ContinuousClock.now > deadline { break }
            }
            #expect(deletions.sorted() == [StoreKey(.instance, "dropped-1"), StoreKey(.instance, "dropped-2")])
            #expect(try await store.load().documents.map(\.key) == [StoreKey(.instance, "kept")])
            #expect(try await store.keepAlive(kept))
            #expect(try await !store.keepAlive(dropped))
            // A put under a lease that is gone is refused.
            var late = StoreWrite()
            late.put(StoreKey(.instance, "late"), [1], lease: dropped)
            await expectStoreError(.conflict) { try await store.commit(late) }
            try await store.revokeLease(kept)
            #expect(try await store.load().documents.isEmpty)
        }
    }

    @Test(arguments: Backend.allCases)
    func aFencedWriteLandsOnlyWhileItsTermLeads(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, _ in
            let first = try await store.grantLease(ttl: 5)
            let term = try await store.campaign(candidate: "controller-a", lease: first)
            #expect(try await store.leader() == "controller-a")
            var write = StoreWrite(fence: term)
            write.put(StoreKey(.rollout, "orders"), [1])
            _ = try await store.commit(write)

            // A second candidate waits while the first leads, and leads once its lease ends.
            let second = try await store.grantLease(ttl: 5)
            let campaign = Task { try await store.campaign(candidate: "controller-b", lease: second) }
            try await store.revokeLease(first)
            let next = try await campaign.value
            #expect(next.revision > term.revision)
            #expect(try await store.leader() == "controller-b")

            // The deposed term's write is refused, and nothing of it lands.
            var stale = StoreWrite(fence: term)
            stale.put(StoreKey(.rollout, "orders"), [2])
            await expectStoreError(.fenced) { try await store.commit(stale) }
            #expect(try await store.load().documents(in: .rollout).map(\.body) == [[1]])
            var current = StoreWrite(fence: next)
            current.put(StoreKey(.rollout, "orders"), [3])
            _ = try await store.commit(current)
            #expect(try await store.load().documents(in: .rollout).map(\.body) == [[3]])
        }
    }

    /// etcd only: revisions are one sequence for every client of the cluster, and a write
    /// made through one member is seen by a watcher on another.
    @Test func twoControllersOnOneEtcdShareRevisionsAndChanges() async throws {
        try await StoreHarness.with(.etcd) { store, endpoints in
            let parts = endpoints.split(separator: ",").map(String.init)
            let other = EtcdStore(
                client: try EtcdClient(options: .init(endpoints: [parts[2]]), logger: Logger(label: "test")),
                prefix: (store as? EtcdStore)?.prefix ?? ""
            )
            defer { Task { await other.close() } }
            let start = try await other.load().revision
            let stream = other.changes(after: start)
            var write = StoreWrite()
            write.put(Self.service, [1])
            let revision = try await store.commit(write)
            var seen: StoreChanges?
            for try await batch in stream {
                seen = batch
                break
            }
            #expect(seen?.revision == revision)
            #expect(seen?.changes.map(\.summary) == ["service/orders=[1]"])
            var second = StoreWrite()
            second.put(Self.instance, [2])
            #expect(try await other.commit(second) > revision)
        }
    }

    /// A write whose deletes find nothing makes no revision and says so (0): on etcd the
    /// revision it would otherwise answer is the cluster's, here one made under another
    /// prefix that no watch of this store shows, and a controller waiting for it to come
    /// back would wait forever. A write of `maxOperations` lands; one more is refused
    /// whole, before anything is sent.
    @Test(arguments: Backend.allCases)
    func aWriteThatChangesNothingMakesNoRevisionAndAnOversizedOneIsRefused(_ backend: Backend) async throws {
        try await StoreHarness.with(backend) { store, endpoints in
            var write = StoreWrite()
            write.put(Self.service, [1])
            let revision = try await store.commit(write)
            if let etcd = store as? EtcdStore {
                // Another mesh on the same cluster moves the cluster's revision on.
                let neighbour = EtcdStore(
                    client: try EtcdClient(
                        options: .init(endpoints: [String(endpoints.split(separator: ",")[0])]),
                        logger: Logger(label: "test")
                    ),
                    prefix: etcd.prefix + "-neighbour"
                )
                var elsewhere = StoreWrite()
                elsewhere.put(Self.service, [9])
                #expect(try await neighbour.commit(elsewhere) > revision)
                await neighbour.close()
            }
            var nothing = StoreWrite()
            nothing.delete(Self.instance)
            #expect(try await store.commit(nothing) == 0)
            #expect(try await store.load().documents.map(\.key) == [Self.service])

            var largest = StoreWrite()
            for n in 0..<StoreWrite.maxOperations { largest.put(StoreKey(.instance, "i-\(n)"), [1]) }
            #expect(try await store.commit(largest) > revision)
            var oversized = StoreWrite()
            for n in 0...StoreWrite.maxOperations { oversized.put(StoreKey(.policy, "p-\(n)"), [1]) }
            await expectStoreError(.tooLarge) { try await store.commit(oversized) }
            #expect(try await store.load().documents(in: .policy).isEmpty)
        }
    }

    @Test func splitKeepsEachGroupWholeAndEveryWriteWithinTheLimit() {
        let groups: [[StoreWrite.Operation]] = (0..<100).map { n in
            [.put(StoreKey(.revoked, "s-\(n)"), [1]), .delete(StoreKey(.credential, "c-\(n)"))]
        }
        let writes = StoreWrite.split(groups)
        #expect(writes.count == 2)
        #expect(writes.allSatisfy { $0.operations.count <= StoreWrite.maxOperations })
        #expect(writes.flatMap(\.operations) == groups.flatMap { $0 })
        #expect(writes[0].operations.count % 2 == 0, "a pair is never split across writes")
    }

    /// etcd only: a write sent to a member that takes the connection and never answers is
    /// not sent again to the next member (it may have been committed: sent twice it would
    /// land twice, or fail its own condition). It fails as "may have landed", and the next
    /// call starts at the next member and lands.
    @Test func aWriteToAMemberThatDoesNotAnswerIsNotSentAgainElsewhere() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        try await StoreHarness.with(.etcd) { store, endpoints in
            let prefix = (store as? EtcdStore)?.prefix ?? ""
            var options = EtcdClient.Options(
                endpoints: ["http://127.0.0.1:\(silent.port)"] + endpoints.split(separator: ",").map(String.init)
            )
            options.requestTimeout = .seconds(1)
            let other = EtcdStore(
                client: try EtcdClient(options: options, logger: Logger(label: "test")),
                prefix: prefix
            )
            var write = StoreWrite(conditions: [.absent(Self.service)])
            write.put(Self.service, [1])
            do {
                let revision = try await other.commit(write)
                Issue.record("landed at \(revision) through a member that never answers")
            } catch let error as StoreError {
                #expect(error.code == .unavailable && error.message.contains("may have landed"), "\(error)")
            }
            #expect(try await store.load().documents.isEmpty, "the write was not sent to another member")
            #expect(try await other.commit(write) > 0, "the next call goes to the next member")
            await other.close()
        }
    }

    @Test func anUnreachableEtcdIsUnavailableNotAHang() async throws {
        var options = EtcdClient.Options(endpoints: ["http://127.0.0.1:9"])
        options.requestTimeout = .seconds(1)
        let store = EtcdStore(client: try EtcdClient(options: options, logger: Logger(label: "test")))
        var write = StoreWrite()
        write.put(Self.service, [1])
        await expectStoreError(.unavailable) { try await store.commit(write) }
        await store.close()
    }
}

/// The store refuses with `code` (messages say more than a test should pin down).
func expectStoreError(
    _ code: StoreError.Code,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Int64
) async {
    do {
        let revision = try await body()
        Issue.record("landed at \(revision) instead of failing with \(code)", sourceLocation: sourceLocation)
    } catch let error as StoreError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("failed with \(error), not a StoreError", sourceLocation: sourceLocation)
    }
}

extension StoreChange {
    var summary: String { body.map { "\(key)=\($0)" } ?? "\(key) deleted" }
}

/// A TCP port that takes connections (the kernel completes them into its backlog) and
/// never reads or answers: a member that hangs.
final class SilentListener {
    let port: Int
    private let socket: Int32

    init() throws {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            _ = Glibc.close(fd)
            throw HarnessError("cannot listen: \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        socket = fd
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(socket) }
}

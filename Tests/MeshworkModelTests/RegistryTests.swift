import Foundation
import MeshworkModel
import MeshworkTraffic
import Testing

@Suite("Registry")
struct RegistryTests {
    let second: UInt64 = 1_000_000_000

    func instance(_ id: String, _ service: String = "orders", ttl: Int = 10) -> InstanceResource {
        var instance = InstanceResource(id: id, service: service, address: "127.0.0.1", port: 8000)
        instance.ttlSeconds = ttl
        return instance
    }

    @Test func registeringCreatesTheServiceAndBumpsTheRevision() {
        var registry = Registry(now: 0)
        let events = registry.putInstance(instance("orders-1"), now: 0)
        #expect(events.map(\.kind) == [.servicePut, .instancePut])
        #expect(events.map(\.revision) == [1, 2])
        #expect(registry.revision == 2)
        #expect(registry.services["orders"] != nil)
        // The same instance again changes nothing and makes no event.
        #expect(registry.putInstance(instance("orders-1"), now: 1).isEmpty)
        #expect(registry.revision == 2)
    }

    @Test func leasesExpireAfterTheirTTLUnlessRenewed() throws {
        var registry = Registry(now: 0)
        _ = registry.putInstance(instance("orders-1", ttl: 10), now: 0)
        _ = registry.putInstance(instance("orders-2", ttl: 10), now: 0)
        _ = registry.putInstance(instance("static", ttl: 0), now: 0)
        _ = try registry.heartbeat("orders-1", health: nil, now: 8 * second)
        #expect(registry.expireLeases(now: 9 * second).isEmpty)
        let expired = registry.expireLeases(now: 10 * second)
        #expect(expired.map(\.instance?.id) == ["orders-2"])
        #expect(expired.first?.kind == .instanceDeleted)
        #expect(registry.expireLeases(now: 18 * second).map(\.instance?.id) == ["orders-1"])
        // No lease: lives until deleted.
        #expect(registry.expireLeases(now: 1_000 * second).isEmpty)
        #expect(registry.instances["static"] != nil)
    }

    @Test func heartbeatsReportHealthAndUnknownInstancesAreRefused() throws {
        var registry = Registry(now: 0)
        _ = registry.putInstance(instance("orders-1"), now: 0)
        let events = try registry.heartbeat("orders-1", health: .unhealthy, now: 1)
        #expect(events.first?.instance?.health == .unhealthy)
        #expect(registry.instances["orders-1"]?.isServing == false)
        #expect(try registry.heartbeat("orders-1", health: .unhealthy, now: 2).isEmpty)
        #expect(throws: RegistryError.notFound("instance \"nope\"")) {
            try registry.heartbeat("nope", health: nil, now: 3)
        }
    }

    @Test func deletingAServiceTakesItsInstances() throws {
        var registry = Registry(now: 0)
        _ = registry.putInstance(instance("orders-1"), now: 0)
        _ = registry.putInstance(instance("orders-2"), now: 0)
        _ = registry.putInstance(instance("web-1", "web"), now: 0)
        let events = try registry.deleteService("orders")
        #expect(events.map(\.kind) == [.instanceDeleted, .instanceDeleted, .serviceDeleted])
        #expect(registry.instances.keys.sorted() == ["web-1"])
    }

    @Test func watchersResumeWithExactlyWhatTheyMissed() throws {
        var registry = Registry(now: 0)
        _ = registry.putInstance(instance("orders-1"), now: 0)
        let seen = registry.revision
        _ = registry.putInstance(instance("orders-2"), now: 0)
        _ = try registry.deleteInstance("orders-1")
        let missed = try #require(registry.events(after: seen))
        #expect(missed.map(\.revision) == [seen + 1, seen + 2])
        #expect(missed.map(\.kind) == [.instancePut, .instanceDeleted])
        #expect(registry.events(after: registry.revision) == [])
        // A revision from the future (the controller lost its store): snapshot.
        #expect(registry.events(after: registry.revision + 5) == nil)
    }

    @Test func historyThatIsGoneMeansASnapshot() {
        var registry = Registry(now: 0, historyLimit: 10)
        for n in 0..<40 { _ = registry.putInstance(instance("orders-\(n)"), now: 0) }
        #expect(registry.events(after: 1) == nil)
        #expect(registry.events(after: registry.revision - 5)?.count == 5)
    }

    /// A store commit's events all carry its revision; revisions may skip (commits of
    /// documents watchers never see); a watcher resumes after any revision it was told.
    @Test func storeCommitsShareARevisionAndResumeAcrossGaps() throws {
        var registry = Registry(revision: 100, now: 0)
        let first = registry.applying(at: 104) { registry in
            registry.putInstance(instance("orders-1"), now: 0)
        }
        #expect(first.map(\.kind) == [.servicePut, .instancePut])
        #expect(first.map(\.revision) == [104, 104])
        // A commit that changed nothing here still moves the registry to its revision.
        #expect(registry.applying(at: 109) { _ in [RegistryEvent]() }.isEmpty)
        #expect(registry.revision == 109)
        let third = try registry.applying(at: 112) { registry in try registry.deleteInstance("orders-1") }
        #expect(third.map(\.revision) == [112])
        #expect(registry.events(after: 100)?.map(\.revision) == [104, 104, 112])
        #expect(registry.events(after: 104)?.map(\.revision) == [112])
        #expect(registry.events(after: 109)?.map(\.revision) == [112])
        #expect(registry.events(after: 112) == [])
        // Before the revision it was restored at: a snapshot.
        #expect(registry.events(after: 99) == nil)
        // A route applied from the store keeps the age its document gives it.
        var route = HTTPRoute(name: "r")
        route.parents = ["orders"]
        route.created = 42
        _ = registry.applying(at: 113) { registry in registry.putRoute(route) }
        #expect(registry.routes["r"]?.created == 42)
    }

    @Test func aDroppedCommitTakesAllItsEventsOutOfTheHistory() {
        var registry = Registry(now: 0, historyLimit: 2)
        _ = registry.applying(at: 1) { registry in registry.putInstance(instance("orders-1"), now: 0) }
        _ = registry.applying(at: 2) { registry in registry.putInstance(instance("orders-2"), now: 0) }
        _ = registry.applying(at: 3) { registry in registry.putInstance(instance("orders-3"), now: 0) }
        // Four events (two at revision 1) reached twice the limit: revision 1 went whole.
        #expect(registry.events(after: 0) == nil)
        #expect(registry.events(after: 1)?.map(\.revision) == [2, 3])
    }

    @Test func restoredInstancesGetAFreshLease() {
        var registry = Registry(instances: [instance("orders-1", ttl: 10)], revision: 7, now: 100 * second)
        #expect(registry.revision == 7)
        #expect(registry.expireLeases(now: 109 * second).isEmpty)
        #expect(registry.expireLeases(now: 110 * second).count == 1)
    }

    @Test func resourcesParseWithPreciseErrors() throws {
        let instance = try InstanceResource.parse(
            #"{"service": "orders", "address": "10.0.0.7", "port": 8080, "zone": "eu-1a", "weight": 3}"#
        )
        #expect(instance.id == "orders-10-0-0-7-8080")
        #expect(instance.zone == "eu-1a" && instance.weight == 3 && instance.health == .healthy)
        func errors(_ text: String, id: String? = nil) -> [String] {
            do {
                _ = try InstanceResource.parse(text, id: id)
                return []
            } catch {
                return error.errors.map(\.description)
            }
        }
        #expect(
            errors(#"{"service": "Orders", "address": "a", "port": 0, "colour": 1}"#).sorted() == [
                "colour: unknown field (known fields: address, health, id, kind, metadata, port, service, ttlSeconds, version, weight, zone)",
                "port: must be between 1 and 65535, found 0",
                "service: must be lowercase letters, digits and '-', not starting or ending with '-' (found \"Orders\")",
            ]
        )
        #expect(
            errors(#"{"id": "a", "service": "orders", "address": "x", "port": 1}"#, id: "b")
                == [#"id: "a" does not match the instance in the URL, "b""#]
        )
        #expect(errors(#"{"service": "orders", "address": "x", "port": 1, "health": "meh"}"#).count == 1)
        // Metadata is bounded (an instance is one store document every watcher gets).
        let long = String(repeating: "v", count: 1025)
        #expect(
            errors(#"{"service": "orders", "address": "x", "port": 1, "metadata": {"k": "\#(long)"}}"#)
                == ["metadata: keys of at most 128 bytes and values of at most 1024"]
        )
        let fits = String(repeating: "v", count: 1024)
        #expect(errors(#"{"service": "orders", "address": "x", "port": 1, "metadata": {"k": "\#(fits)"}}"#).isEmpty)
        let service = try ServiceResource.parse(
            #"{"policy": {"balancer": "maglev", "hashOn": "header:x-user", "outlierDetection": "off"}}"#,
            name: "orders"
        )
        #expect(service.policy.balancer == .maglev)
        #expect(service.policy.outlierDetection == nil)
        // What the API serves parses back to the same resource.
        let encoder = JSONEncoder()
        let text = String(decoding: try encoder.encode(service), as: UTF8.self)
        #expect(try ServiceResource.parse(text) == service)
    }
}

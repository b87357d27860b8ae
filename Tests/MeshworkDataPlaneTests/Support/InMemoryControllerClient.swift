import MeshworkIdentity
import MeshworkModel

@testable import MeshworkDiscovery

/// The controller link answered from memory: a registry of instances with revisions, watch
/// streams fed from it, and counters of what the agent asked. Tests of the discovery
/// agent's services run against it without a controller process or a socket.
actor InMemoryControllerClient: ControllerClient {
    private(set) var state: DiscoveryState
    private(set) var registrations = 0
    private(set) var heartbeats = 0
    private(set) var deregistered: [String] = []
    private(set) var reports: [TelemetryReport] = []
    /// Watch connections asked for, reachable or not.
    private(set) var watchAttempts = 0
    /// While set, every call fails as an unreachable controller would.
    var unreachable = false
    private var watchers: [Int: AsyncStream<WatchLine>.Continuation] = [:]
    private var nextWatcher = 0

    init(_ state: DiscoveryState = DiscoveryState()) {
        self.state = state
    }

    struct Unreachable: Error {}

    func setUnreachable(_ value: Bool) {
        unreachable = value
        if value {
            for watcher in watchers.values { watcher.finish() }
            watchers.removeAll()
        }
    }

    /// The controller forgets an instance (its lease expired while its sidecar was away).
    func forget(_ id: String) {
        guard let instance = state.instances[id] else { return }
        publish(RegistryEvent(revision: state.revision + 1, kind: .instanceDeleted, instance: instance))
    }

    /// An instance registered by someone else (another sidecar).
    func put(_ instance: InstanceResource) {
        publish(RegistryEvent(revision: state.revision + 1, kind: .instancePut, instance: instance))
    }

    func put(_ service: ServiceResource) {
        publish(RegistryEvent(revision: state.revision + 1, kind: .servicePut, service: service))
    }

    private func publish(_ event: RegistryEvent) {
        state.apply(event)
        for watcher in watchers.values { watcher.yield(.event(event)) }
    }

    func requestCertificate(_ fields: [String: String]) async throws -> IssuedCertificate {
        throw ControllerClientError("no CA in memory", refused: true)
    }

    func register(_ instance: InstanceResource) async throws {
        guard !unreachable else { throw Unreachable() }
        registrations += 1
        publish(RegistryEvent(revision: state.revision + 1, kind: .instancePut, instance: instance))
    }

    func heartbeat(_ id: String, health: InstanceHealth) async throws -> Bool {
        guard !unreachable else { throw Unreachable() }
        heartbeats += 1
        guard var instance = state.instances[id] else { return false }
        if instance.health != health {
            instance.health = health
            publish(RegistryEvent(revision: state.revision + 1, kind: .instancePut, instance: instance))
        }
        return true
    }

    func report(_ report: TelemetryReport, instance id: String) async throws {
        guard !unreachable else { throw Unreachable() }
        reports.append(report)
    }

    func deregister(_ id: String) async throws {
        guard !unreachable else { throw Unreachable() }
        deregistered.append(id)
        forget(id)
    }

    func watch(
        services: [String]?,
        after revision: Int64?,
        onLine: @Sendable (WatchLine) async throws -> Void
    ) async throws {
        watchAttempts += 1
        guard !unreachable else { throw Unreachable() }
        let (lines, continuation) = AsyncStream.makeStream(of: WatchLine.self)
        let id = nextWatcher
        nextWatcher += 1
        watchers[id] = continuation
        continuation.yield(.snapshot(state))
        defer { watchers[id] = nil }
        for await line in lines {
            try Task.checkCancellation()
            try await onLine(line)
        }
    }
}

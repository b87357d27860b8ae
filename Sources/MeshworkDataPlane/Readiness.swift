import MeshworkModel
import Synchronization

/// Lifecycle flags read from any thread (admin /ready, drain).
final class SidecarFlags: Sendable {
    let started = Atomic<Bool>(false)
    let draining = Atomic<Bool>(false)
    let discoveryApplied = Atomic<Bool>(false)
    /// Unix milliseconds of the last confirmation of the discovery state (0: none).
    let confirmedAtMillis = Atomic<Int64>(0)
    /// A controller is configured and there are services to watch.
    let discoveryExpected: Bool
    /// Where the workload certificate lives, when the sidecar is to have one.
    let identity: MeshTLSSource?

    init(discoveryExpected: Bool, identity: MeshTLSSource?) {
        self.discoveryExpected = discoveryExpected
        self.identity = identity
    }

    var readiness: Readiness {
        Readiness(
            listening: started.load(ordering: .relaxed),
            discovery: !discoveryExpected || discoveryApplied.load(ordering: .relaxed),
            identity: identity.map { $0.current != nil } ?? true,
            draining: draining.load(ordering: .relaxed)
        )
    }
}

/// Whether a sidecar can do its job: its listeners bound, its first discovery state applied
/// (when it has a controller), its workload identity installed (when it is to have one),
/// and not draining. `/ready` answers 200 only then; `meshwork run` starts the app then.
public struct Readiness: Sendable, Hashable, CustomStringConvertible {
    public var listening: Bool
    public var discovery: Bool
    public var identity: Bool
    public var draining: Bool

    public var isReady: Bool { listening && discovery && identity && !draining }

    /// `ready`, or what is missing: `not ready: listeners, discovery, identity` / `draining`.
    public var description: String {
        if draining { return "draining" }
        let missing = [(listening, "listeners"), (discovery, "discovery"), (identity, "identity")]
            .filter { !$0.0 }.map(\.1)
        return missing.isEmpty ? "ready" : "not ready: " + missing.joined(separator: ", ")
    }
}

/// A listener's port could not be bound.
public struct ListenerBindError: Error, CustomStringConvertible {
    public var listener: String
    public var address: HostPort
    public var underlying: any Error

    public var description: String {
        "cannot listen on \(address) for \(listener): \(underlying)"
    }
}

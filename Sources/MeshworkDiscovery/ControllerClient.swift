import MeshworkIdentity
import MeshworkModel

/// What a sidecar needs of the controller: its identity, its registration and heartbeats,
/// its telemetry reports and the watch stream. One protocol with two implementations:
/// `HTTPControllerClient`, the controller API over HTTP(S) (used by the discovery agent,
/// `meshwork ctl` and the demo), and an in-memory one in the tests, so the agent's logic is
/// tested without sockets (as grpc-swift's in-process transport is).
public protocol ControllerClient: Sendable {
    /// Asks for a workload certificate; `fields` are the request's JSON fields (a CSR and
    /// a credential: the join token, or the current certificate and a proof).
    func requestCertificate(_ fields: [String: String]) async throws -> IssuedCertificate
    func register(_ instance: InstanceResource) async throws
    /// Renews the lease and reports health; false when the controller no longer knows the
    /// instance (it expired while the sidecar was away: register again).
    func heartbeat(_ id: String, health: InstanceHealth) async throws -> Bool
    /// What the sidecar carried since its last report.
    func report(_ report: TelemetryReport, instance id: String) async throws
    func deregister(_ id: String) async throws
    /// Streams watch lines for `services` (all when nil), resuming after `revision`; ends
    /// when the stream does (the caller reconnects).
    func watch(
        services: [String]?,
        after revision: Int64?,
        onLine: @Sendable (WatchLine) async throws -> Void
    ) async throws
}

/// A call to the controller that failed.
public struct ControllerClientError: Error, CustomStringConvertible {
    public let description: String
    /// The controller answered and said no (as opposed to being unreachable): retrying the
    /// same request will not help.
    public var refused = false
    /// The answer's status and body, when the controller answered.
    public var status: Int?
    public var body: [UInt8] = []

    public init(_ description: String, refused: Bool = false, status: Int? = nil, body: [UInt8] = []) {
        self.description = description
        self.refused = refused
        self.status = status
        self.body = body
    }
}

import NIOHTTP1

/// An error the mesh made itself (as opposed to the app's own answer), with the status it
/// is answered with and the reason carried in `x-meshwork-error`, so a 503 from the mesh
/// can always be told from the app's.
public struct MeshError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: String, Hashable, Sendable {
        case noRoute = "no_route"
        case noHealthyEndpoint = "no_healthy_endpoint"
        case connectFailed = "connect_failed"
        case connectTimeout = "connect_timeout"
        case upstreamTimeout = "upstream_timeout"
        case upstreamReset = "upstream_reset"
        case badRequest = "bad_request"
        case badPath = "bad_path"
        case headerTooLarge = "header_too_large"
        case headerTimeout = "header_timeout"
        case protocolError = "upstream_protocol_error"
        case upgradeUnsupported = "upgrade_unsupported"
        case overflowConnections = "overflow_connections"
        case overflowPending = "overflow_pending"
        case overflowRequests = "overflow_requests"
        case throttled
        case rateLimited = "rate_limited"
        case concurrencyLimited = "concurrency_limited"
        case unauthorized
        case notReady = "not_ready"
        case tlsHandshakeFailed = "tls_handshake_failed"
        case peerIdentityMismatch = "peer_identity_mismatch"
        case connectionLimit = "connection_limit"
        case keepAliveTimeout = "keepalive_timeout"
        case mtlsRequired = "mtls_required"
        case faultAbort = "fault_abort"
        case faultDelayTimeout = "fault_delay_timeout"
    }

    private let code: Code
    /// A fault's own HTTP status and gRPC status (0: the code's).
    private let faultHTTP: Int16
    private let faultGRPC: Int16

    private init(_ code: Code, http: Int = 0, grpc: Int = 0) {
        self.code = code
        self.faultHTTP = Int16(http)
        self.faultGRPC = Int16(grpc)
    }

    /// A route's `Fault` filter aborted the request before it left (`x-meshwork-error:
    /// fault_abort`, counted as such): never mistaken for the service's own failure. A gRPC
    /// call gets `grpcStatus`, or the gRPC mapping of `httpStatus`.
    public static func faultAbort(httpStatus: Int?, grpcStatus: Int?) -> MeshError {
        let http = httpStatus ?? 503
        return MeshError(.faultAbort, http: http, grpc: grpcStatus ?? GRPCStatus.fromHTTP(http))
    }

    /// The request's deadline passed while a route's `Fault` filter delayed it, before it
    /// left: a timeout the route made, not the service (504, gRPC DEADLINE_EXCEEDED).
    public static let faultDelayTimeout = MeshError(.faultDelayTimeout)

    var isFault: Bool { code == .faultAbort }
    var faultGRPCStatus: Int { Int(faultGRPC) }

    /// No route or cluster matches the request (unknown Host on the http-proxy listener).
    public static let noRoute = MeshError(.noRoute)
    /// The cluster has no endpoint to send to.
    public static let noHealthyEndpoint = MeshError(.noHealthyEndpoint)
    /// The endpoint refused or dropped the connection attempt.
    public static let connectFailed = MeshError(.connectFailed)
    /// The endpoint did not accept the connection within the connect timeout.
    public static let connectTimeout = MeshError(.connectTimeout)
    /// The response did not complete within the request timeout.
    public static let upstreamTimeout = MeshError(.upstreamTimeout)
    /// The upstream connection closed or reset before the response began.
    public static let upstreamReset = MeshError(.upstreamReset)
    /// The request was malformed (bad framing, conflicting lengths, invalid header).
    public static let badRequest = MeshError(.badRequest)
    /// A request target whose path is ambiguous (an encoded `/` or `\`, NUL, a bad
    /// percent-encoding, not starting with `/`): refused rather than guessed at.
    public static let badPath = MeshError(.badPath)
    /// The request head was larger than `limits.maxHeaderBytes`.
    public static let headerTooLarge = MeshError(.headerTooLarge)
    /// The client did not send a complete request head in time.
    public static let headerTimeout = MeshError(.headerTimeout)
    /// The upstream answered with something that is not valid HTTP.
    public static let protocolError = MeshError(.protocolError)

    /// An `Upgrade` request to a cluster that cannot carry one (h2c endpoints).
    public static let upgradeUnsupported = MeshError(.upgradeUnsupported)

    /// Circuit breaker: the cluster's connection limit is reached (per event loop share).
    public static let overflowConnections = MeshError(.overflowConnections)
    /// Circuit breaker: too many requests already wait for a connection.
    public static let overflowPending = MeshError(.overflowPending)
    /// Circuit breaker: too many requests are already in flight to the cluster.
    public static let overflowRequests = MeshError(.overflowRequests)
    /// Adaptive throttling refused the request locally: the cluster rejects most calls.
    public static let throttled = MeshError(.throttled)
    /// The inbound rate limit is exceeded.
    public static let rateLimited = MeshError(.rateLimited)
    /// The inbound adaptive concurrency limit is reached: the app is at capacity.
    public static let concurrencyLimited = MeshError(.concurrencyLimited)

    /// Authorization policy refuses the caller (its identity, or the path or method it asked for).
    public static let unauthorized = MeshError(.unauthorized)
    /// The inbound side has not yet learnt who may call (its first policies, from the
    /// controller or its cache): it refuses rather than admit everyone.
    public static let notReady = MeshError(.notReady)

    /// Inbound: a connection failed its mTLS handshake (plaintext, no client certificate,
    /// another CA, expired). Counted; the connection is closed.
    public static let tlsHandshakeFailed = MeshError(.tlsHandshakeFailed)
    /// Outbound: the peer's certificate carries another identity than the cluster's service.
    /// Counted; the request fails as `upstream_reset` (or is retried elsewhere).
    public static let peerIdentityMismatch = MeshError(.peerIdentityMismatch)
    /// A listener already had `limits.maxConnections` open: the new connection is closed
    /// at accept, and counted.
    public static let connectionLimit = MeshError(.connectionLimit)
    /// An HTTP/2 peer answered neither a keepalive PING nor anything else in time: its
    /// connection is closed, and counted.
    public static let keepAliveTimeout = MeshError(.keepAliveTimeout)
    /// The mesh requires mTLS (`kind: Mesh`, `requireMTLS: true`): a plaintext caller is
    /// refused inbound, and a sidecar without an identity makes no plaintext mesh hop.
    public static let mtlsRequired = MeshError(.mtlsRequired)

    /// Every reason, for pre-creating metrics.
    public static let all: [MeshError] = [
        .noRoute, .noHealthyEndpoint, .connectFailed, .connectTimeout, .upstreamTimeout, .upstreamReset,
        .badRequest, .badPath, .headerTooLarge, .headerTimeout, .protocolError, .upgradeUnsupported,
        .overflowConnections, .overflowPending, .overflowRequests, .throttled, .rateLimited, .concurrencyLimited,
        .unauthorized, .notReady, .tlsHandshakeFailed, .peerIdentityMismatch, .connectionLimit,
        .keepAliveTimeout, .mtlsRequired, .faultAbort(httpStatus: nil, grpcStatus: nil), .faultDelayTimeout,
    ]

    /// The value of `x-meshwork-error` and the `reason` metric label.
    public var reason: String { code.rawValue }

    public var status: HTTPResponseStatus {
        switch code {
        case .noRoute: return .notFound
        case .noHealthyEndpoint, .notReady, .overflowConnections, .overflowPending, .overflowRequests, .throttled,
            .concurrencyLimited, .connectionLimit, .keepAliveTimeout:
            return .serviceUnavailable
        case .rateLimited: return .tooManyRequests
        case .unauthorized, .mtlsRequired: return .forbidden
        case .connectFailed, .upstreamReset, .protocolError, .upgradeUnsupported, .tlsHandshakeFailed,
            .peerIdentityMismatch:
            return .badGateway
        case .connectTimeout, .upstreamTimeout, .faultDelayTimeout: return .gatewayTimeout
        case .badRequest, .badPath: return .badRequest
        case .headerTooLarge: return .requestHeaderFieldsTooLarge
        case .headerTimeout: return .requestTimeout
        case .faultAbort: return HTTPResponseStatus(statusCode: Int(faultHTTP))
        }
    }

    public var description: String { reason }

    public static let headerName = "x-meshwork-error"
}

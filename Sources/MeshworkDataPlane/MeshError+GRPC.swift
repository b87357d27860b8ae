import NIOHTTP1

/// Mesh errors as gRPC answers. A gRPC client reads `grpc-status` only: an HTTP 503 from
/// the mesh would reach the app as UNAVAILABLE with a message about HTTP, a 504 as
/// UNAVAILABLE rather than DEADLINE_EXCEEDED, a 403 as PERMISSION_DENIED by accident of the
/// HTTP mapping (grpc's doc/http-grpc-status-mapping.md). So a call the mesh refuses or
/// gives up on is answered in gRPC's own terms: HTTP 200 and a Trailers-Only response
/// (PROTOCOL-HTTP2.md) with the code that says what happened, as Envoy's and Linkerd's
/// proxies do.
extension MeshError {
    /// The gRPC status code (grpc's doc/statuscodes.md) of this error.
    public var grpcStatus: Int {
        if isFault { return faultGRPCStatus }
        switch self {
        case .upstreamTimeout, .faultDelayTimeout: return GRPCStatus.deadlineExceeded
        case .noRoute: return GRPCStatus.unimplemented
        case .unauthorized, .mtlsRequired: return GRPCStatus.permissionDenied
        case .overflowConnections, .overflowPending, .overflowRequests, .throttled, .rateLimited,
            .concurrencyLimited, .headerTooLarge:
            return GRPCStatus.resourceExhausted
        case .badRequest, .badPath: return GRPCStatus.internalError
        default:
            // No healthy endpoint, connect failures and timeouts, resets, protocol and TLS
            // failures: the call may succeed elsewhere or later.
            return GRPCStatus.unavailable
        }
    }

    /// `grpc-message`: plain ASCII, so no percent-encoding is needed (PROTOCOL-HTTP2.md).
    public func grpcMessage(unauthenticated: Bool = false) -> String {
        if unauthenticated { return "meshwork: unauthenticated: the caller has no workload identity" }
        return "meshwork: \(reason)"
    }

    /// The fields that carry this error on a gRPC call: in a Trailers-Only answer's head, or
    /// in the trailers of a response that had already begun.
    func grpcFields(unauthenticated: Bool) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(3)
        headers.add(
            name: "grpc-status",
            value: String(unauthenticated ? GRPCStatus.unauthenticated : grpcStatus)
        )
        headers.add(name: "grpc-message", value: grpcMessage(unauthenticated: unauthenticated))
        headers.add(name: MeshError.headerName, value: reason)
        return headers
    }
}

/// The gRPC status codes the mesh answers with.
public enum GRPCStatus {
    public static let ok = 0
    public static let deadlineExceeded = 4
    public static let permissionDenied = 7
    public static let resourceExhausted = 8
    public static let unimplemented = 12
    public static let internalError = 13
    public static let unavailable = 14
    public static let unauthenticated = 16

    /// grpc's doc/http-grpc-status-mapping.md: what a gRPC client makes of an HTTP status.
    static func fromHTTP(_ status: Int) -> Int {
        switch status {
        case 400: return internalError
        case 401: return unauthenticated
        case 403: return permissionDenied
        case 404: return unimplemented
        case 429, 502, 503, 504: return unavailable
        default: return 2  // UNKNOWN
        }
    }

    /// Whether a request's `content-type` makes it a gRPC call (`application/grpc`,
    /// `application/grpc+proto`, `application/grpc-web`...: the prefix, case-insensitive).
    static func isGRPC(contentType: String?) -> Bool {
        guard let contentType else { return false }
        let prefix = "application/grpc".utf8
        guard contentType.utf8.count >= prefix.count else { return false }
        return zip(contentType.utf8, prefix).allSatisfy { a, b in a | 0x20 == b | 0x20 }
    }
}

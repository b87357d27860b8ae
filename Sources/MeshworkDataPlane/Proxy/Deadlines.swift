import NIOCore
import NIOHTTP1

/// Deadline propagation: the time a request has left travels with it to the next hop, so
/// every hop gives up together instead of working for a caller that has gone.
///
/// Between sidecars it is `x-meshwork-timeout` (milliseconds left); gRPC requests also carry
/// `grpc-timeout` (the gRPC over HTTP/2 spec's `<digits><unit>`), which gRPC servers honour
/// themselves. Every listener takes the smaller of its own timeout and the caller's, so an
/// app that passes `x-meshwork-timeout` (or a gRPC app its `grpc-timeout`) on to its own
/// calls gets one deadline across the whole chain.
enum Deadlines {
    static let header = "x-meshwork-timeout"

    /// The timeout of a request: the route's, or less when the caller said so in
    /// `x-meshwork-timeout` or `grpc-timeout` (their values).
    static func timeout(meshwork: String?, grpc: String?, routeTimeout: TimeAmount) -> TimeAmount {
        var timeout = routeTimeout
        if let meshwork, let ms = Int64(meshwork), ms >= 0 {
            timeout = min(timeout, .milliseconds(ms))
        }
        if let grpc, let grpcTimeout = parseGRPCTimeout(grpc) {
            timeout = min(timeout, grpcTimeout)
        }
        return timeout
    }

    /// Writes the time left into the headers sent to the next hop.
    static func propagate(_ timeout: TimeAmount, in headers: inout HTTPHeaders) {
        let ms = max(0, timeout.nanoseconds / 1_000_000)
        headers.replaceOrAdd(name: header, value: String(ms))
        if headers.first(name: "content-type")?.hasPrefix("application/grpc") == true {
            let existing = headers.first(name: "grpc-timeout").flatMap(parseGRPCTimeout)
            if existing.map({ $0 > timeout }) ?? true {
                headers.replaceOrAdd(name: "grpc-timeout", value: "\(ms)m")
            }
        }
    }

    /// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
    static func parseGRPCTimeout(_ text: String) -> TimeAmount? {
        guard let unit = text.last, text.count >= 2, text.count <= 9, let value = Int64(text.dropLast()), value >= 0
        else { return nil }
        switch unit {
        case "H": return .hours(value)
        case "M": return .minutes(value)
        case "S": return .seconds(value)
        case "m": return .milliseconds(value)
        case "u": return .microseconds(value)
        case "n": return .nanoseconds(value)
        default: return nil
        }
    }
}

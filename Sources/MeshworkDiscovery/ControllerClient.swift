import AsyncHTTPClient
import Foundation
import MeshworkIdentity
import MeshworkModel
import NIOCore
import NIOHTTP1

/// The sidecar's side of the controller API: registration, heartbeats and the watch stream.
struct ControllerClient: Sendable {
    let baseURL: String
    let token: String?
    let http: HTTPClient

    struct Failure: Error, CustomStringConvertible {
        let description: String
        /// The controller answered and said no (as opposed to being unreachable).
        var refused = false
    }

    /// Asks for a workload certificate; `fields` are the request's JSON fields.
    func requestCertificate(_ fields: [String: String]) async throws -> IssuedCertificate {
        let body = String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
        var request = HTTPClientRequest(url: baseURL + "/v1/certificates")
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
        let (status, text) = try await send(request)
        guard status == .ok else {
            throw Failure(description: "certificate refused (\(status.code)): \(text)", refused: true)
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(IssuedCertificate.self, from: Data(text.utf8))
    }

    private func request(_ method: HTTPMethod, _ path: String, body: String? = nil) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        return request
    }

    private func send(
        _ request: HTTPClientRequest,
        timeout: TimeAmount = .seconds(5)
    ) async throws -> (
        status: HTTPResponseStatus, body: String
    ) {
        let response = try await http.execute(request, timeout: timeout)
        let body = try await response.body.collect(upTo: 1 << 20)
        return (response.status, String(buffer: body))
    }

    func register(_ instance: InstanceResource) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let body = String(decoding: try encoder.encode(instance), as: UTF8.self)
        let (status, text) = try await send(request(.PUT, "/v1/instances/\(instance.id)", body: body))
        guard status == .ok else { throw Failure(description: "registration refused (\(status.code)): \(text)") }
    }

    /// Renews the lease and reports health; false when the controller no longer knows the
    /// instance (it expired while we were away: register again).
    func heartbeat(_ id: String, health: InstanceHealth) async throws -> Bool {
        let (status, text) = try await send(
            request(.POST, "/v1/instances/\(id)/heartbeat", body: #"{"health": "\#(health.rawValue)"}"#)
        )
        if status == .notFound { return false }
        guard status == .ok else { throw Failure(description: "heartbeat refused (\(status.code)): \(text)") }
        return true
    }

    /// Sends what the sidecar carried since its last report.
    func report(_ report: TelemetryReport, instance id: String) async throws {
        let body = String(decoding: try JSONEncoder().encode(report), as: UTF8.self)
        let (status, text) = try await send(request(.POST, "/v1/instances/\(id)/telemetry", body: body))
        guard status == .noContent || status == .ok else {
            throw Failure(description: "telemetry refused (\(status.code)): \(text)")
        }
    }

    func deregister(_ id: String) async throws {
        let (status, text) = try await send(request(.DELETE, "/v1/instances/\(id)"), timeout: .seconds(2))
        guard status == .ok || status == .notFound else {
            throw Failure(description: "deregistration refused (\(status.code)): \(text)")
        }
    }

    /// Streams watch lines for `services`, resuming after `revision`; ends when the
    /// connection does (the caller reconnects).
    func watch(services: [String], after revision: Int64?, onLine: @Sendable (WatchLine) async -> Void) async throws {
        var path = "/v1/watch?services=" + services.joined(separator: ",")
        if let revision, revision > 0 { path += "&revision=\(revision)" }
        // No overall deadline: the stream lives as long as the connection; pings every
        // 10 s show it is alive, and the client's read timeout (25 s) ends a silent one.
        let response = try await http.execute(request(.GET, path), timeout: .hours(24 * 365))
        guard response.status == .ok else {
            throw Failure(description: "watch refused (\(response.status.code))")
        }
        var pending = ByteBuffer()
        for try await chunk in response.body {
            var chunk = chunk
            pending.writeBuffer(&chunk)
            while let newline = pending.readableBytesView.firstIndex(of: 0x0A) {
                let length = newline - pending.readerIndex
                let line = pending.readString(length: length) ?? ""
                pending.moveReaderIndex(forwardBy: 1)
                guard !line.isEmpty else { continue }
                await onLine(try WatchLine.parse(line))
            }
            pending.discardReadBytes()
        }
    }
}

import AsyncHTTPClient
import Foundation
import MeshworkIdentity
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// The controller API over HTTP(S), with AsyncHTTPClient: the one client of the sidecar's
/// discovery agent, `meshwork ctl` and the demo.
///
/// Its trust and its credential may change while it runs: an https:// controller is
/// verified first by the join token's CA pin, then by the trust bundle that comes with each
/// workload certificate (it follows CA rotations), and the controller may issue a
/// credential with a certificate. Each change applies to the next call; a watch streaming
/// over the old connection ends (its client is shut down) and resumes on the new one.
///
/// Several controllers (`https://a:7070,https://b:7070`, controllers sharing one etcd) are
/// tried in order from the one that answered last: a call that cannot reach one goes to
/// the next, and a watch that ends resumes, by its revision (the same on every controller
/// of one store), on whichever answers.
public final class HTTPControllerClient: ControllerClient {
    /// Every controller's base URL, in the order given.
    public let baseURLs: [String]
    private let group: any EventLoopGroup
    private let timeouts: HTTPClient.Configuration.Timeout
    private struct Current {
        var http: HTTPClient
        var token: String?
        /// The controller that answered last: tried first.
        var preferred = 0
        /// Controllers that could not be reached (or whose stream broke) lately, until
        /// when: tried after the others. (A dead host costs a connect timeout per try:
        /// paid once, not by every heartbeat.)
        var down: [Int: ContinuousClock.Instant] = [:]
    }

    /// How long a controller that failed is tried last.
    static let downFor: Duration = .seconds(10)
    private let current: Mutex<Current>

    /// The controller tried first now.
    public var baseURL: String { baseURLs[current.withLock { $0.preferred }] }

    /// `roots` verify an https:// controller (nil: the system's). The read timeout ends a
    /// watch stream that went silent (a controller host gone without closing its
    /// connections): the controller pings every 10 s.
    public init(
        baseURL: String,
        token: String?,
        roots: [NIOSSLCertificate]? = nil,
        group: any EventLoopGroup,
        timeouts: HTTPClient.Configuration.Timeout = .init(connect: .seconds(3), read: .seconds(25))
    ) {
        let urls = (try? ControllerLink.urls(baseURL).get()) ?? [baseURL]
        self.baseURLs = urls
        self.group = group
        self.timeouts = timeouts
        let http = Self.makeHTTP(https: urls[0].hasPrefix("https://"), roots: roots, group: group, timeouts: timeouts)
        self.current = Mutex(Current(http: http, token: token))
    }

    public var isHTTPS: Bool { baseURLs[0].hasPrefix("https://") }

    private static func makeHTTP(
        https: Bool,
        roots: [NIOSSLCertificate]?,
        group: any EventLoopGroup,
        timeouts: HTTPClient.Configuration.Timeout
    ) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = timeouts
        if https {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let roots { tls.trustRoots = .certificates(roots) }
            tls.minimumTLSVersion = .tlsv12
            // Closing does not wait the default 5 s for the controller's close_notify (RFC
            // 8446 6.1 does not ask the closing side to wait): the controller does not read
            // it while it streams a watch, so every sidecar's shutdown took 5 s more.
            tls.shutdownTimeout = .milliseconds(200)
            configuration.tlsConfiguration = tls
        }
        return HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
    }

    /// From now on the controller is verified by `roots` alone.
    public func retrust(_ roots: [NIOSSLCertificate]) {
        guard isHTTPS else { return }
        let http = Self.makeHTTP(https: true, roots: roots, group: group, timeouts: timeouts)
        let old = current.withLock { current in
            defer { current.http = http }
            return current.http
        }
        Task { try? await old.shutdown() }
    }

    /// The bearer credential for every later call.
    public func setCredential(_ token: String) {
        current.withLock { $0.token = token }
    }

    public func shutdown() async {
        try? await current.withLock { $0.http }.shutdown()
    }

    // MARK: calls

    /// One API call: the answer's status and body (at most `limit` bytes). Throws only when
    /// the controller cannot be reached.
    public func call(
        _ method: HTTPMethod,
        _ path: String,
        body: String? = nil,
        contentType: String = "application/json",
        timeout: TimeAmount = .seconds(10),
        limit: Int = 1 << 20
    ) async throws -> (status: HTTPResponseStatus, body: ByteBuffer) {
        try await failingOver { base in
            let (http, request) = self.request(method, base + path, body: body, contentType: contentType)
            let response = try await http.execute(request, timeout: timeout)
            return (response.status, try await response.body.collect(upTo: limit))
        }
    }

    /// `body` against the preferred controller, then each other one while they cannot
    /// be reached (an answer, any status, ends it: the controllers share one store, so
    /// another would say the same).
    private func failingOver<T>(_ body: (String) async throws -> T) async throws -> T {
        try await failingOverIndexed { base, _ in try await body(base) }
    }

    private func failingOverIndexed<T>(_ body: (String, Int) async throws -> T) async throws -> T {
        let order = current.withLock { current in
            let now = ContinuousClock.now
            current.down = current.down.filter { $0.value > now }
            let all = (0..<baseURLs.count).map { (current.preferred + $0) % baseURLs.count }
            return all.filter { current.down[$0] == nil } + all.filter { current.down[$0] != nil }
        }
        var lastError: (any Error)?
        for index in order {
            do {
                let answer = try await body(baseURLs[index], index)
                current.withLock { current in
                    current.preferred = index
                    current.down[index] = nil
                }
                return answer
            } catch let error as ControllerClientError where error.refused {
                throw error
            } catch {
                if Task.isCancelled { throw error }
                markDown(index)
                lastError = error
            }
        }
        throw lastError ?? ControllerClientError("no controller URL")
    }

    private func markDown(_ index: Int) {
        guard baseURLs.count > 1 else { return }
        current.withLock { $0.down[index] = .now + Self.downFor }
    }

    private func request(
        _ method: HTTPMethod,
        _ url: String,
        body: String? = nil,
        contentType: String = "application/json"
    ) -> (HTTPClient, HTTPClientRequest) {
        let (http, token) = current.withLock { ($0.http, $0.token) }
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "content-type", value: contentType)
            request.body = .bytes(ByteBuffer(string: body))
        }
        return (http, request)
    }

    private func send(
        _ method: HTTPMethod,
        _ path: String,
        body: String? = nil,
        timeout: TimeAmount = .seconds(5)
    ) async throws -> (status: HTTPResponseStatus, text: String) {
        let (status, body) = try await call(method, path, body: body, timeout: timeout)
        return (status, String(buffer: body))
    }

    public func requestCertificate(_ fields: [String: String]) async throws -> IssuedCertificate {
        let body = String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
        let (status, text) = try await send(.POST, "/v1/certificates", body: body)
        guard status == .ok else {
            throw ControllerClientError("certificate refused (\(status.code)): \(text)", refused: true)
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(IssuedCertificate.self, from: Data(text.utf8))
    }

    public func register(_ instance: InstanceResource) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let body = String(decoding: try encoder.encode(instance), as: UTF8.self)
        let (status, text) = try await send(.PUT, "/v1/instances/\(instance.id)", body: body)
        guard status == .ok else { throw ControllerClientError("registration refused (\(status.code)): \(text)") }
    }

    public func heartbeat(_ id: String, health: InstanceHealth) async throws -> Bool {
        let (status, text) = try await send(
            .POST,
            "/v1/instances/\(id)/heartbeat",
            body: #"{"health": "\#(health.rawValue)"}"#
        )
        if status == .notFound { return false }
        guard status == .ok else { throw ControllerClientError("heartbeat refused (\(status.code)): \(text)") }
        return true
    }

    public func report(_ report: TelemetryReport, instance id: String) async throws {
        let body = String(decoding: try JSONEncoder().encode(report), as: UTF8.self)
        let (status, text) = try await send(.POST, "/v1/instances/\(id)/telemetry", body: body)
        guard status == .noContent || status == .ok else {
            throw ControllerClientError("telemetry refused (\(status.code)): \(text)")
        }
    }

    public func deregister(_ id: String) async throws {
        let (status, text) = try await send(.DELETE, "/v1/instances/\(id)", timeout: .seconds(2))
        guard status == .ok || status == .notFound else {
            throw ControllerClientError("deregistration refused (\(status.code)): \(text)")
        }
    }

    public func watch(
        services: [String]?,
        after revision: Int64?,
        onLine: @Sendable (WatchLine) async throws -> Void
    ) async throws {
        try await watchLines(services: services, after: revision) { try await onLine(try WatchLine.parse($0)) }
    }

    /// The watch stream as the controller writes it, one line at a time.
    public func watchLines(
        services: [String]?,
        after revision: Int64?,
        onLine: (String) async throws -> Void
    ) async throws {
        // This client reads route events (`WatchLine` knows them).
        var query: [String] = ["routes=1"]
        if let services { query.append("services=" + services.joined(separator: ",")) }
        if let revision, revision > 0 { query.append("revision=\(revision)") }
        let path = "/v1/watch" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        try await streamLines(path) { line in
            if !line.isEmpty { try await onLine(line) }
        }
    }

    /// A streaming answer (the watch, a tap), one line at a time (empty lines too: a tap's
    /// keepalive). A line is reassembled when it spans chunks; at most 16 MiB waits for its
    /// newline. No overall deadline: the stream lives as long as the connection, and the
    /// client's read timeout ends a silent one. A refusal throws with its status and body.
    public func streamLines(_ path: String, onLine: (String) async throws -> Void) async throws {
        let (response, served) = try await failingOverIndexed { base, index in
            let (http, request) = self.request(.GET, base + path)
            return (try await http.execute(request, deadline: .distantFuture), index)
        }
        guard response.status == .ok else {
            let body = (try? await response.body.collect(upTo: 1 << 20)).map { Array($0.readableBytesView) } ?? []
            throw ControllerClientError(
                "\(path) refused (\(response.status.code)): \(String(decoding: body, as: UTF8.self))",
                refused: true,
                status: Int(response.status.code),
                body: body
            )
        }
        var pending = ByteBuffer()
        do {
            try await read(response, into: &pending, path, onLine)
        } catch {
            // A stream that broke: that controller is tried last for a while (when the
            // stream is watched again, it resumes on another).
            if !Task.isCancelled, !(error is CancellationError) { markDown(served) }
            throw error
        }
    }

    private func read(
        _ response: HTTPClientResponse,
        into pending: inout ByteBuffer,
        _ path: String,
        _ onLine: (String) async throws -> Void
    ) async throws {
        for try await chunk in response.body {
            var chunk = chunk
            pending.writeBuffer(&chunk)
            while let newline = pending.readableBytesView.firstIndex(of: 0x0A) {
                let length = newline - pending.readerIndex
                let line = pending.readString(length: length) ?? ""
                pending.moveReaderIndex(forwardBy: 1)
                try await onLine(line)
            }
            guard pending.readableBytes <= 16 << 20 else {
                throw ControllerClientError("a line longer than 16 MiB from \(path)")
            }
            pending.discardReadBytes()
        }
    }

    /// The trust bundle over a connection that verifies nothing: only for the join token's
    /// CA pin to pick the one root it names (`CertificateAuthority.pinnedRoot`).
    public func unverifiedTrustBundle() async throws -> String {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(10))
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        configuration.tlsConfiguration = tls
        let unverified = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        defer { Task { try? await unverified.shutdown() } }
        let response = try await failingOver { base in
            try await unverified.execute(HTTPClientRequest(url: base + "/v1/trust-bundle"), timeout: .seconds(10))
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw ControllerClientError("trust bundle: \(response.status.code)")
        }
        return String(buffer: body)
    }
}

import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeshworkModel
import NIOCore
import NIOHTTP1

/// The controller's HTTP/JSON API under `/v1`. Reads are open (the API listens on loopback
/// by default); mutations need `Authorization: Bearer <token>`: the operator token for
/// everything, or a sidecar credential for its own instance only. Bad bodies are answered
/// 400 with every problem's field path and reason.
struct ControllerAPI {
    let controller: Controller
    let identity: IdentityService
    let metrics: ControllerMetrics
    /// The sidecars' telemetry reports, as rolling windows.
    let telemetry: TelemetryStore
    let token: String
    /// Reads need a token too (any scope, or a sidecar credential).
    var protectReads = false
    /// The certificate the controller presents to sidecars' admin listeners (taps).
    var tapIdentity: ControllerTLS?
    /// With several controllers: telemetry goes to the leader (`TelemetryRelay`).
    var relay: TelemetryRelay?
    let logger: Logger

    static let maxBody = 1 << 20
    /// The largest count one telemetry report may carry per class or latency bucket.
    static let maxReportedCount: UInt64 = 1 << 40

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        if protectReads { router.add(middleware: ReadAuthentication(api: self)) }
        let v1 = router.group("v1")
        v1.get("services") { _, _ in try await json(controller.services()) }
        v1.get("services/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let service = await controller.service(name) else { throw notFound("service \"\(name)\"") }
            return try json(service)
        }
        v1.put("services/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            var request = request
            let text = try await body(&request)
            let service = try validated { () throws(ConfigErrors) in try ServiceResource.parse(text, name: name) }
            let revision = try await controller.putService(service)
            return try json(service, revision: revision)
        }
        v1.delete("services/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            return try await mutation { try await controller.deleteService(name) }
        }
        v1.get("instances") { request, _ in
            let service = request.uri.queryParameters.get("service")
            return try await json(controller.instances(service: service))
        }
        v1.get("instances/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let instance = await controller.instance(id) else { throw notFound("instance \"\(id)\"") }
            return try json(instance)
        }
        v1.put("instances/:id") { request, context in
            let caller = try await authenticate(request)
            let id = try context.parameters.require("id")
            var request = request
            let text = try await body(&request)
            let instance = try validated { () throws(ConfigErrors) in try InstanceResource.parse(text, id: id) }
            try await authorize(caller, instance: id, service: instance.service)
            let revision = try await controller.putInstance(instance)
            return try json(instance, revision: revision)
        }
        v1.post("instances/:id/heartbeat") { request, context in
            let caller = try await authenticate(request)
            let id = try context.parameters.require("id")
            try await authorize(caller, instance: id, service: nil)
            var request = request
            let text = try await body(&request)
            let health = try validated { () throws(ConfigErrors) in try Self.parseHeartbeat(text) }
            do {
                let answer = try await mutation { try await controller.heartbeat(id, health: health) }
                metrics.heartbeat(known: true)
                return answer
            } catch let error as APIError where error.status == .notFound {
                metrics.heartbeat(known: false)
                throw error
            }
        }
        v1.post("instances/:id/telemetry") { request, context in
            let caller = try await authenticate(request)
            let id = try context.parameters.require("id")
            try await authorize(caller, instance: id, service: nil)
            guard let instance = await controller.instance(id) else { throw notFound("instance \"\(id)\"") }
            var request = request
            let text = try await body(&request)
            let report = try validated { () throws(ConfigErrors) in
                try Self.parseTelemetry(text, service: instance.service)
            }
            // The quota belongs to who reports: an instance-bound credential, or a
            // service-wide one (which may write any instance of its service) as a whole, so
            // inventing instance ids buys no more quota.
            // A follower hands the report to the leader, where rollouts are analysed (and
            // keeps it when the leader does not take it).
            if let relay, !TelemetryRelay.relayed(request), let home = await controller.telemetryHome(),
                await relay.relay(
                    .POST,
                    to: home,
                    path: "/v1/instances/\(id)/telemetry",
                    authorization: request.headers[.authorization],
                    body: ByteBuffer(string: text),
                    expected: .noContent
                ) != nil
            {
                return Response(status: .noContent)
            }
            let reporter: String
            switch caller {
            case .workload(let credential):
                reporter = credential.instance.map { "instance:\($0)" } ?? "service:\(credential.service)"
            case .operator: reporter = "instance:\(id)"
            }
            do {
                if try telemetry.add(report, instance: id, reporter: reporter) > 0 {
                    metrics.refused("telemetry_series_quota")
                }
            } catch {
                metrics.refused("telemetry_rate_limited")
                throw APIError(
                    status: .tooManyRequests,
                    message: "telemetry reports come at most 10 a second per instance"
                )
            }
            return Response(status: .noContent)
        }
        v1.delete("instances/:id") { request, context in
            let caller = try await authenticate(request)
            let id = try context.parameters.require("id")
            try await authorize(caller, instance: id, service: nil)
            return try await mutation { try await controller.deleteInstance(id) }
        }
        v1.get("watch") { request, _ in
            let services = request.uri.queryParameters.get("services").map {
                Set($0.split(separator: ",").map(String.init))
            }
            let revision = request.uri.queryParameters.get("revision").flatMap { Int64($0) }
            // Routes only to watchers that say they read them: a sidecar from before routes
            // fails on an event kind it does not know, and would reconnect forever.
            let routes = request.uri.queryParameters.get("routes") == "1"
            return await watch(services: services, after: revision, routes: routes)
        }
        v1.get("openapi.json") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: OpenAPIDocument.json))
            )
        }
        addIdentityRoutes(to: v1)
        addPolicyRoutes(to: v1)
        addRolloutRoutes(to: v1)
        addTelemetryRoutes(to: v1)
        addTapRoutes(to: v1)
        router.get("metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.text()))
            )
        }
        router.get("healthz") { _, _ in "ok\n" }
        // The dashboard: a page built into the binary that reads the API above.
        router.get("ui") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: DashboardPage.html))
            )
        }
        return router
    }

    // MARK: watch

    /// NDJSON: one JSON object per line — `snapshot`, then `event`s; a `ping` every 10 s
    /// keeps idle connections (and proxies) alive and tells the client the revision.
    private func watch(services: Set<String>?, after revision: Int64?, routes: Bool) async -> Response {
        let stream = await controller.watch(services: services, after: revision, routes: routes)
        let trustBundle = await identity.trustBundle
        let body = ResponseBody { writer in
            // One stream per watcher, read here: its events, the controller's pings and
            // trust bundles (no timer or relay task of its own: a watcher is a connection
            // and this loop, which matters at 10,000 of them).
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            func bundleLine(_ bundle: TrustBundle) throws -> Data {
                try encoder.encode(
                    WatchTrustBundle(trustBundle: bundle.pem, activeRoot: bundle.activeRoot, revoked: bundle.revoked)
                )
            }
            // The roots to verify peers with come first on every connection.
            var first = try bundleLine(trustBundle)
            first.append(0x0A)
            try await writer.write(ByteBuffer(bytes: first))
            for await message in stream {
                var data: Data
                switch message {
                case .snapshot(let revision, let services, let instances, let policies, let mesh, let routes):
                    data = try encoder.encode(
                        WatchSnapshot(
                            revision: revision,
                            services: services,
                            instances: instances,
                            policies: policies,
                            mesh: mesh,
                            routes: routes
                        )
                    )
                case .event(let shared):
                    // (Encoded once, by the first watcher it reaches.)
                    try await writer.write(try shared.line())
                    continue
                case .trustBundle(let bundle):
                    data = try bundleLine(bundle)
                case .ping(let revision):
                    data = try encoder.encode(WatchPing(revision: revision))
                }
                data.append(0x0A)
                try await writer.write(ByteBuffer(bytes: data))
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok,
            headers: [.contentType: "application/x-ndjson", .cacheControl: "no-store"],
            body: body
        )
    }

    struct WatchSnapshot: Encodable {
        let type = "snapshot"
        let revision: Int64
        let services: [ServiceResource]
        let instances: [InstanceResource]
        let policies: [AuthorizationPolicy]
        let mesh: MeshSettings
        let routes: [HTTPRoute]
    }

    struct WatchEventLine: Encodable {
        let event: RegistryEvent
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode("event", forKey: .type)
            try container.encode(event.revision, forKey: .revision)
            try container.encode(event.kind.rawValue, forKey: .kind)
            try container.encodeIfPresent(event.service, forKey: .service)
            try container.encodeIfPresent(event.instance, forKey: .instance)
            try container.encodeIfPresent(event.policy, forKey: .policy)
            try container.encodeIfPresent(event.mesh, forKey: .mesh)
            try container.encodeIfPresent(event.route, forKey: .route)
        }
        enum Keys: String, CodingKey { case type, revision, kind, service, instance, policy, mesh, route }
    }

    struct WatchTrustBundle: Encodable {
        let type = "trust-bundle"
        let trustBundle: String
        let activeRoot: String
        /// Serials (hex) of revoked workload certificates not expired yet.
        let revoked: [String]
    }

    struct WatchPing: Encodable {
        let type = "ping"
        let revision: Int64
    }

    // MARK: helpers

    static func parseHeartbeat(_ text: String) throws(ConfigErrors) -> InstanceHealth? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { return nil }
        let reader = ConfigReader()
        var health: InstanceHealth?
        if let root = reader.parse(trimmed), let f = reader.mapping(root, "", known: ["health"]) {
            health = f.choice("health", as: InstanceHealth.self)
        }
        guard reader.errors.isEmpty else { throw ConfigErrors(reader.errors) }
        return health
    }

    /// Who is calling: the operator (the controller's token) or a workload (a sidecar
    /// credential issued with its certificate).
    enum Caller {
        case `operator`(OperatorScope)
        case workload(IdentityService.Credential)
    }

    func authenticate(_ request: Request) async throws -> Caller {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
            metrics.refused("unauthenticated")
            throw APIError(status: .unauthorized, message: "a bearer token is required for changes (--token-file)")
        }
        let bearer = String(header.dropFirst(7))
        if Self.constantTimeEqual(bearer, token) { return .operator(.write) }
        if let scope = await identity.operatorScope(bearer) { return .operator(scope) }
        if let credential = await identity.credential(bearer) { return .workload(credential) }
        metrics.refused("unauthenticated")
        throw APIError(status: .unauthorized, message: "the bearer token is not recognised or has expired")
    }

    func authorizeOperator(_ request: Request) async throws {
        try refuseReadOnly(try await authenticate(request))
    }

    /// Writes need the operator's write scope (or, for their own instance, a workload's credential).
    private func refuseReadOnly(_ caller: Caller) throws {
        switch caller {
        case .operator(.write): return
        case .operator(.read):
            metrics.refused("forbidden")
            throw APIError(status: .forbidden, message: "this operator token has read scope only")
        case .workload(let credential):
            metrics.refused("forbidden")
            throw APIError(
                status: .forbidden,
                message: "a sidecar credential (service \(credential.service)) may only write its own instance"
            )
        }
    }

    /// A workload may write only its own instance: of its own service, and the instance id
    /// its certificate request named (when it named one). The service is the one the body
    /// names and the one the instance already has: a credential of one service cannot take
    /// over (or then delete) another's instance by naming its own in the body.
    private func authorize(_ caller: Caller, instance id: String, service: String?) async throws {
        guard case .workload(let credential) = caller else { return try refuseReadOnly(caller) }
        let existing = await controller.instance(id)?.service
        let target = existing.flatMap { $0 != credential.service ? $0 : nil } ?? service ?? existing
        var allowed = [service, existing].allSatisfy { $0 == nil || $0 == credential.service }
        if let own = credential.instance, own != id { allowed = false }
        guard allowed else {
            metrics.refused("forbidden")
            let whose = credential.instance.map { "instance \($0) of \(credential.service)" } ?? credential.service
            throw APIError(
                status: .forbidden,
                message: "the credential of \(whose) may not write instance \(id)\(target.map { " of \($0)" } ?? "")"
            )
        }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool { SecretFile.constantTimeEqual(a, b) }

    func body(_ request: inout Request) async throws -> String {
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: Self.maxBody)
        } catch {
            throw APIError(status: .contentTooLarge, message: "request body over \(Self.maxBody) bytes")
        }
        // Decoding would put U+FFFD in place of bad bytes, and the registry would store
        // names nobody sent: the body is refused instead, with where the bytes are.
        guard let text = String(validating: buffer.readableBytesView, as: UTF8.self) else {
            throw APIError(
                status: .badRequest,
                message: "invalid body",
                errors: [Self.invalidUTF8(buffer.readableBytesView)]
            )
        }
        return text
    }

    /// Where the first byte sequence that is not UTF-8 starts: line, column and offset.
    static func invalidUTF8(_ bytes: ByteBufferView) -> ConfigError {
        var offset = 0
        var line = 1
        var column = 1
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while case .scalarValue(let scalar) = decoder.decode(&iterator) {
            offset += UTF8.width(scalar)
            if scalar == "\n" {
                line += 1
                column = 1
            } else {
                column += 1
            }
        }
        return ConfigError(
            path: "",
            reason: "the body is not valid UTF-8: bad bytes at line \(line), column \(column) (byte \(offset))"
        )
    }

    /// A telemetry report, checked: its service is the instance's, and its sizes are bounded.
    static func parseTelemetry(_ text: String, service: String) throws(ConfigErrors) -> TelemetryReport {
        let report: TelemetryReport
        do {
            report = try JSONDecoder().decode(TelemetryReport.self, from: Data(text.utf8))
        } catch {
            throw ConfigErrors([ConfigError(path: "", reason: "not a telemetry report: \(error)")])
        }
        var errors: [ConfigError] = []
        if report.service != service {
            errors.append(ConfigError(path: "service", reason: "the instance belongs to \"\(service)\""))
        }
        if !(0...3600).contains(report.seconds) {
            errors.append(ConfigError(path: "seconds", reason: "must be between 0 and 3600"))
        }
        if report.edges.count > 256 { errors.append(ConfigError(path: "edges", reason: "at most 256 edges")) }
        for (index, edge) in report.edges.enumerated() {
            if !["inbound", "outbound"].contains(edge.direction) {
                errors.append(ConfigError(path: "edges[\(index)].direction", reason: "must be inbound or outbound"))
            }
            if edge.classes.count != 5 {
                errors.append(ConfigError(path: "edges[\(index)].classes", reason: "expected 5 counts (1xx to 5xx)"))
            }
            if edge.latency.count > 10_000 || edge.latency.contains(where: { $0.count != 2 }) {
                errors.append(
                    ConfigError(path: "edges[\(index)].latency", reason: "expected at most 10000 [micros, count] pairs")
                )
            }
            if edge.peer.isEmpty || edge.peer.utf8.count > 253 {
                errors.append(ConfigError(path: "edges[\(index)].peer", reason: "must be 1 to 253 bytes"))
            }
            for (field, value) in [("route", edge.route), ("backend", edge.backend)] {
                if let value, value.isEmpty || value.utf8.count > 320 {
                    errors.append(ConfigError(path: "edges[\(index)].\(field)", reason: "must be 1 to 320 bytes"))
                }
            }
            // More than 2^40 responses in one report (an hour at most) is no sidecar's.
            if edge.classes.contains(where: { $0 > Self.maxReportedCount }) {
                errors.append(
                    ConfigError(
                        path: "edges[\(index)].classes",
                        reason: "each count must be at most \(Self.maxReportedCount)"
                    )
                )
            }
            if edge.latency.contains(where: { $0.count == 2 && $0[1] > Self.maxReportedCount }) {
                errors.append(
                    ConfigError(
                        path: "edges[\(index)].latency",
                        reason: "each count must be at most \(Self.maxReportedCount)"
                    )
                )
            }
        }
        guard errors.isEmpty else { throw ConfigErrors(errors) }
        return report
    }

    func validated<T>(_ parse: () throws(ConfigErrors) -> T) throws -> T {
        do {
            return try parse()
        } catch {
            metrics.refused("invalid_resource")
            throw APIError(status: .badRequest, message: "invalid resource", errors: error.errors)
        }
    }

    private func mutation(_ body: () async throws -> Int64) async throws -> Response {
        do {
            let revision = try await body()
            return try json(Revision(revision: revision))
        } catch let error as RegistryError {
            switch error {
            case .notFound(let what): throw notFound(what)
            }
        }
    }

    private func notFound(_ what: String) -> APIError {
        APIError(status: .notFound, message: "no \(what)")
    }

    struct Revision: Encodable {
        let revision: Int64
    }
}

/// With `--protect-reads`: every read under `/v1` needs a bearer token of any kind, except
/// what is public by nature (the OpenAPI document and the trust bundle) and certificate
/// requests (authenticated by their join token or proof).
struct ReadAuthentication: RouterMiddleware {
    let api: ControllerAPI
    static let open: Set<String> = ["/v1/openapi.json", "/v1/trust-bundle", "/healthz", "/metrics"]

    func handle(
        _ request: Request,
        context: BasicRequestContext,
        next: (Request, BasicRequestContext) async throws -> Response
    ) async throws -> Response {
        if request.method == .get, !Self.open.contains(request.uri.path) {
            _ = try await api.authenticate(request)
        }
        return try await next(request, context)
    }
}

/// An API error: its status and a JSON body `{"error": ..., "errors": [{"field", "reason"}]}`.
struct APIError: Error, HTTPResponseError {
    let status: HTTPResponse.Status
    let message: String
    var errors: [ConfigError] = []

    var headers: HTTPFields { [.contentType: "application/json"] }

    struct Body: Encodable {
        struct Field: Encodable {
            let field: String
            let reason: String
        }
        let error: String
        let errors: [Field]
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        let body = Body(error: message, errors: errors.map { Body.Field(field: $0.path, reason: $0.reason) })
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var data = try encoder.encode(body)
        data.append(0x0A)
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// A JSON response, with the registry revision in `x-meshwork-revision` when given.
func json(_ value: some Encodable, revision: Int64? = nil) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    encoder.dateEncodingStrategy = .iso8601
    var data = try encoder.encode(value)
    data.append(0x0A)
    var headers: HTTPFields = [.contentType: "application/json"]
    if let revision { headers[HTTPField.Name("x-meshwork-revision")!] = String(revision) }
    return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

import AsyncHTTPClient
import Foundation
import Hummingbird
import MeshworkModel
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

extension ControllerAPI {
    /// `GET /v1/tap?service=S[&path=&status=&method=&direction=&peer=&sample=&rate=][&limit=N]`:
    /// live request metadata from every instance of S, as NDJSON. The controller opens a tap
    /// on each instance's sidecar (its admin listener, registered as `meshwork.admin`),
    /// merges their lines, and says first which instances it is tapping. The sidecars
    /// sample and rate-limit, so a tap never loads the data path.
    ///
    /// Request metadata is not public: a tap needs an operator token (either scope) even
    /// when reads are open, and a sidecar credential cannot tap. The controller reaches each
    /// sidecar over mTLS with its own certificate (the sidecar serves `/tap` only to the
    /// controller's identity or its local admin token), and only at an admin address on
    /// the instance's own registered host: an instance cannot point the controller at
    /// another machine's ports, or the controller's own.
    func addTapRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("tap") { request, _ in
            switch try await authenticate(request) {
            case .operator: break
            case .workload(let credential):
                metrics.refused("forbidden")
                throw APIError(
                    status: .forbidden,
                    message: "a sidecar credential (service \(credential.service)) cannot tap; use an operator token"
                )
            }
            let query = request.uri.query.map { Substring($0) }
            guard let service = request.uri.queryParameters["service"].map(String.init), !service.isEmpty else {
                throw APIError(
                    status: .badRequest,
                    message: "invalid tap",
                    errors: [ConfigError(path: "service", reason: "required: the service to tap")]
                )
            }
            _ = try validated { () throws(ConfigErrors) in try TapFilter.parse(query: query) }
            var limit: Int?
            if let text = request.uri.queryParameters["limit"] {
                guard let value = Int(text), value > 0 else {
                    throw APIError(
                        status: .badRequest,
                        message: "invalid tap",
                        errors: [ConfigError(path: "limit", reason: "expected a positive integer, found \"\(text)\"")]
                    )
                }
                limit = value
            }
            let instances = await controller.instances(service: service)
            let targets = instances.compactMap { instance in
                instance.metadata[InstanceResource.adminMetadataKey].map {
                    (instance.id, Self.tapTarget($0, of: instance))
                }
            }
            guard !targets.isEmpty else {
                throw APIError(
                    status: .notFound,
                    message: "no instance of \"\(service)\" can be tapped (none registered by a sidecar)"
                )
            }
            guard let tapIdentity else {
                throw APIError(status: .serviceUnavailable, message: "the controller has no certificate to tap with")
            }
            let tls = try tapIdentity.clientConfiguration(trustBundlePEM: await identity.trustBundlePEM)
            return Response(
                status: .ok,
                headers: [.contentType: "application/x-ndjson", .cacheControl: "no-cache"],
                body: Self.relayTaps(targets, query: query ?? "", limit: limit, tls: tls)
            )
        }
    }

    /// Where an instance's tap is opened: its registered admin address when that is a port
    /// on the instance's own address; else why not.
    static func tapTarget(_ admin: String, of instance: InstanceResource) -> Result<HostPort, TapRefusal> {
        guard case .success(let address) = HostPort.parse(admin), address.port > 0 else {
            return .failure(TapRefusal(reason: "admin address \"\(admin)\" is not host:port"))
        }
        guard address.host.lowercased() == instance.address.lowercased() else {
            return .failure(
                TapRefusal(
                    reason:
                        "admin address \(admin) is not on the instance's own address \(instance.address); not tapped"
                )
            )
        }
        return .success(address)
    }

    struct TapRefusal: Error, CustomStringConvertible {
        let reason: String
        var description: String { reason }
    }

    /// How long a sidecar has to open its tap (connect, handshake, first line), and the
    /// longest line it may send.
    static let tapOpenTimeout = Duration.seconds(10)
    static let maxTapLine = 16 * 1024
    /// A tap ends after this long even if its reader stays.
    static let maxTapDuration = TimeAmount.hours(1)

    private enum TapLine: Sendable {
        case opened(String)
        case failed(String, String)
        case event(ByteBuffer)
        /// The sidecar's stream is over (its limit, or it went away).
        case ended
        /// Time to show the reader we are here (and find out whether it still is).
        case keepalive
    }

    /// A tap with nothing to say writes an empty line this often: a write is how a reader
    /// that went away is noticed (a quiet stream never fails; the first write after the
    /// reader's close still succeeds, the next fails: gone within two periods), and the
    /// sidecars' taps are closed with it instead of living out `maxTapDuration` for nobody.
    static let tapKeepalive = Duration.seconds(2)

    private static func relayTaps(
        _ targets: [(String, Result<HostPort, TapRefusal>)],
        query: Substring,
        limit: Int?,
        tls: TLSConfiguration
    ) -> ResponseBody {
        ResponseBody { writer in
            // At most 1024 lines of at most 16 KiB wait (16 MiB); a reader too slow loses the
            // oldest. The stream is finished when the last sidecar's tap ends, so the relay
            // ends even if a flood evicted the `.ended` lines.
            let (lines, continuation) = AsyncStream<TapLine>.makeStream(bufferingPolicy: .bufferingNewest(1024))
            var configuration = HTTPClient.Configuration(
                tlsConfiguration: tls,
                timeout: .init(connect: .seconds(5))
            )
            configuration.decompression = .disabled
            // The admin listener speaks HTTP/1.1 (ALPN would otherwise pick h2).
            configuration.httpVersion = .http1Only
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            do {
                try await relay(
                    targets,
                    query: query,
                    limit: limit,
                    client: client,
                    lines: lines,
                    continuation,
                    &writer
                )
            } catch {
                try? await client.shutdown()
                throw error
            }
            try? await client.shutdown()
            try await writer.finish(nil)
        }
    }

    private static func relay(
        _ targets: [(String, Result<HostPort, TapRefusal>)],
        query: Substring,
        limit: Int?,
        client: HTTPClient,
        lines: AsyncStream<TapLine>,
        _ continuation: AsyncStream<TapLine>.Continuation,
        _ writer: inout any ResponseBodyWriter
    ) async throws {
        let running = NIOLockedValueBox(targets.count)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (id, target) in targets {
                group.addTask {
                    do {
                        try await tapOne(admin: target.get(), query: query, id: id, client: client, into: continuation)
                    } catch {
                        continuation.yield(.failed(id, "\(error)"))
                    }
                    continuation.yield(.ended)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: tapKeepalive)
                    continuation.yield(.keepalive)
                }
            }
            var opened: [String] = []
            var failed: [String: String] = [:]
            var announced = false
            var sent = 0
            var ended = 0
            var wroteSinceKeepalive = false
            for await line in lines {
                switch line {
                case .keepalive:
                    if !wroteSinceKeepalive { try await writer.write(ByteBuffer(string: "\n")) }
                    wroteSinceKeepalive = false
                    continue
                case .ended: ended += 1
                case .opened(let id): opened.append(id)
                case .failed(let id, let reason): failed[id] = reason
                case .event(let buffer):
                    try await writer.write(buffer)
                    wroteSinceKeepalive = true
                    sent += 1
                }
                if !announced, opened.count + failed.count >= targets.count {
                    announced = true
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = .sortedKeys
                    var data = try encoder.encode(TapStart(tapping: opened.sorted(), failed: failed))
                    data.append(0x0A)
                    try await writer.write(ByteBuffer(bytes: data))
                    if opened.isEmpty { break }
                }
                if let limit, sent >= limit { break }
                if ended >= targets.count { break }
            }
            group.cancelAll()
        }
    }

    struct TapStart: Encodable {
        var tapping: [String]
        var failed: [String: String]
    }

    /// Streams one sidecar's tap into `continuation`, line by line. A sidecar that has not
    /// opened its tap within `tapOpenTimeout`, or sends a line longer than `maxTapLine`,
    /// is dropped from the tap.
    private static func tapOne(
        admin: HostPort,
        query: Substring,
        id: String,
        client: HTTPClient,
        into continuation: AsyncStream<TapLine>.Continuation
    ) async throws {
        let opened = NIOLockedValueBox(false)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await Task.sleep(for: tapOpenTimeout)
                if !opened.withLockedValue({ $0 }) {
                    throw TapRefusal(reason: "no tap opened within \(tapOpenTimeout)")
                }
            }
            group.addTask {
                try await streamTap(admin: admin, query: query, id: id, client: client, into: continuation) {
                    opened.withLockedValue { $0 = true }
                }
            }
            // The first error (the open deadline, or the stream's) ends both.
            while try await group.next() != nil {}
        }
    }

    private static func streamTap(
        admin: HostPort,
        query: Substring,
        id: String,
        client: HTTPClient,
        into continuation: AsyncStream<TapLine>.Continuation,
        onOpen: @Sendable () -> Void
    ) async throws {
        let forwarded = query.split(separator: "&").filter { !$0.hasPrefix("service=") }.joined(separator: "&")
        let host = admin.host.contains(":") ? "[\(admin.host)]" : admin.host
        let request = HTTPClientRequest(url: "https://\(host):\(admin.port)/tap?\(forwarded)")
        let response = try await client.execute(request, deadline: .now() + maxTapDuration)
        guard response.status == .ok else {
            let text = try await response.body.collect(upTo: 4096)
            throw TapRefusal(reason: "\(response.status.code): \(String(buffer: text))")
        }
        var pending = ByteBuffer()
        var first = true
        for try await chunk in response.body {
            var chunk = chunk
            pending.writeBuffer(&chunk)
            while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let length = newline - pending.readerIndex + 1
                guard let line = pending.readSlice(length: length) else { break }
                if first {
                    first = false
                    onOpen()
                    continuation.yield(.opened(id))  // the sidecar's {"tapping":true}
                } else {
                    continuation.yield(.event(line))
                }
            }
            guard pending.readableBytes <= maxTapLine else {
                throw TapRefusal(reason: "a tap line longer than \(maxTapLine) bytes")
            }
            pending.discardReadBytes()
        }
    }
}

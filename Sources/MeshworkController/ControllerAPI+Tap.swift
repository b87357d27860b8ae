import AsyncHTTPClient
import Foundation
import Hummingbird
import MeshworkModel
import NIOCore
import NIOHTTP1

extension ControllerAPI {
    /// `GET /v1/tap?service=S[&path=&status=&method=&direction=&peer=&sample=&rate=][&limit=N]`:
    /// live request metadata from every instance of S, as NDJSON. The controller opens a tap
    /// on each instance's sidecar (its admin listener, registered as `meshwork.admin`),
    /// merges their lines, and says first which instances it is tapping. The sidecars
    /// sample and rate-limit, so a tap never loads the data path.
    func addTapRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("tap") { request, _ in
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
            let targets = await controller.instances(service: service).compactMap { instance in
                instance.metadata[InstanceResource.adminMetadataKey].map { (instance.id, $0) }
            }
            guard !targets.isEmpty else {
                throw APIError(
                    status: .notFound,
                    message: "no instance of \"\(service)\" can be tapped (none registered by a sidecar)"
                )
            }
            return Response(
                status: .ok,
                headers: [.contentType: "application/x-ndjson", .cacheControl: "no-cache"],
                body: Self.relayTaps(targets, query: query ?? "", limit: limit)
            )
        }
    }

    private enum TapLine: Sendable {
        case opened(String)
        case failed(String, String)
        case event(ByteBuffer)
        /// The sidecar's stream is over (its limit, or it went away).
        case ended
    }

    private static func relayTaps(_ targets: [(String, String)], query: Substring, limit: Int?) -> ResponseBody {
        ResponseBody { writer in
            let (lines, continuation) = AsyncStream<TapLine>.makeStream(bufferingPolicy: .bufferingNewest(4096))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (id, admin) in targets {
                    group.addTask {
                        do {
                            try await tapOne(admin: admin, query: query, id: id, into: continuation)
                        } catch {
                            continuation.yield(.failed(id, "\(error)"))
                        }
                        continuation.yield(.ended)
                    }
                }
                var opened: [String] = []
                var failed: [String: String] = [:]
                var announced = false
                var sent = 0
                var ended = 0
                for await line in lines {
                    switch line {
                    case .ended: ended += 1
                    case .opened(let id): opened.append(id)
                    case .failed(let id, let reason): failed[id] = reason
                    case .event(let buffer):
                        try await writer.write(buffer)
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
            try await writer.finish(nil)
        }
    }

    struct TapStart: Encodable {
        var tapping: [String]
        var failed: [String: String]
    }

    /// Streams one sidecar's tap into `continuation`, line by line.
    private static func tapOne(
        admin: String,
        query: Substring,
        id: String,
        into continuation: AsyncStream<TapLine>.Continuation
    ) async throws {
        let forwarded = query.split(separator: "&").filter { !$0.hasPrefix("service=") }.joined(separator: "&")
        let request = HTTPClientRequest(url: "http://\(admin)/tap?\(forwarded)")
        let response = try await HTTPClient.shared.execute(request, deadline: .distantFuture)
        guard response.status == .ok else {
            let text = try await response.body.collect(upTo: 4096)
            continuation.yield(.failed(id, "\(response.status.code): \(String(buffer: text))"))
            return
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
                    continuation.yield(.opened(id))  // the sidecar's {"tapping":true}
                } else {
                    continuation.yield(.event(line))
                }
            }
            pending.discardReadBytes()
        }
    }
}

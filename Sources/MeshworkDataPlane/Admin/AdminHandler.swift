import Foundation
import MeshworkModel
import NIOCore
import NIOHTTP1

/// What the admin listener serves; the sidecar supplies the answers.
struct AdminEndpoints: Sendable {
    /// Prometheus text exposition.
    var metrics: @Sendable () -> [UInt8]
    /// The effective config as JSON.
    var config: @Sendable () -> [UInt8]
    /// Whether the sidecar takes traffic (false while starting or draining).
    var readiness: @Sendable () -> Readiness
    /// Live request metadata for `/tap`.
    var taps: TapHub
    /// The bearer token that opens `/config` and `/tap` on a plaintext connection (nil:
    /// they are the controller's alone).
    var token: String?
}

/// The admin listener: `/metrics`, `/ready`, `/live` for probes and scrapers, and the
/// privileged `/config` (the effective config) and `/tap` (a stream of request metadata,
/// NDJSON). Small answers built whole; never on the data path.
///
/// Who may use the privileged ones: the controller, over mTLS with its certificate from the
/// mesh CA (SPIFFE ID `spiffe://<trust domain>/controller`; any other client certificate
/// fails the handshake), or a local operator with the admin token (`Authorization: Bearer`,
/// `adminTokenFile`). The listener tells TLS from plaintext by the first byte.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoints: AdminEndpoints
    /// The connection is the controller's, authenticated by its handshake.
    private let fromController: Bool
    private var head: HTTPRequestHead?
    private var tap: (subscriber: TapSubscriber, remaining: Int?, timer: Scheduled<Void>?)?
    /// How often a tap's queue is written out.
    static let tapInterval = TimeAmount.milliseconds(100)

    init(endpoints: AdminEndpoints, fromController: Bool) {
        self.endpoints = endpoints
        self.fromController = fromController
    }

    /// The pipeline of an accepted admin connection: TLS (the controller's only) or
    /// plaintext HTTP/1.1, told apart by the first byte.
    static func addPipeline(
        to channel: any Channel,
        endpoints: AdminEndpoints,
        tls: MeshTLSSource?,
        settings: ProxySettings
    ) throws {
        try channel.pipeline.syncOperations.addHandler(
            HTTPVersionSniffer(deadline: settings.headerReadTimeout, classify: HTTPVersionSniffer.isTLS) {
                isTLS,
                channel in
                let sync = channel.pipeline.syncOperations
                if isTLS {
                    // Only with a workload identity is there a trust domain whose controller
                    // this sidecar knows.
                    guard let tls, let own = tls.identity, let server = tls.serverHandler() else {
                        throw MeshTLSUnavailable()
                    }
                    let controller = SPIFFEID.controller(trustDomain: own.trustDomain)
                    try ListenerPipelines.addServerTLS(server, to: channel, settings: settings)
                    try sync.addHandler(
                        PeerIdentityHandler(peer: ConnectionPeer(), metrics: settings.metrics) { identity, _ in
                            identity == controller
                        }
                    )
                }
                // An admin connection with nothing in flight is closed after the idle time
                // (a tap keeps writing, so it is not idle in this sense).
                try sync.addHandler(IdleStateHandler(allTimeout: settings.idleTimeout))
                try sync.configureHTTPServerPipeline(withErrorHandling: true)
                try sync.addHandler(AdminHandler(endpoints: endpoints, fromController: isTLS))
            }
        )
    }

    /// Whether `head` may read `/config` or open `/tap`.
    private func isPrivileged(_ head: HTTPRequestHead) -> Bool {
        if fromController { return true }
        guard let token = endpoints.token, let header = head.headers.first(name: "authorization"),
            header.hasPrefix("Bearer ")
        else { return false }
        return SecretFile.constantTimeEqual(header.dropFirst(7), token)
    }

    private func refuse(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let reason =
            endpoints.token == nil
            ? "the controller's only: this sidecar has no admin token (adminTokenFile)\n"
            : "needs the admin token: Authorization: Bearer <the adminTokenFile's token>\n"
        send(.unauthorized, "text/plain", Array(reason.utf8), head: head, context: context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopTap()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent, tap == nil {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func stopTap() {
        guard let tap else { return }
        tap.timer?.cancel()
        endpoints.taps.unsubscribe(tap.subscriber)
        self.tap = nil
    }

    /// `GET /tap?...`: the events the filter lets through, one JSON object per line, until
    /// `limit` events were sent or the client goes away. First line: `{"tapping": true}`
    /// once the tap is installed. A reader too slow for the events loses some (each batch
    /// that lost any is followed by `{"dropped": N}`).
    private func startTap(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first
        let filter: TapFilter
        do {
            filter = try TapFilter.parse(query: query)
        } catch {
            send(.badRequest, "text/plain", Array("bad tap: \(error)\n".utf8), head: head, context: context)
            return
        }
        var limit: Int?
        for pair in (query ?? "").split(separator: "&") where pair.hasPrefix("limit=") {
            guard let value = Int(pair.dropFirst(6)), value > 0 else {
                send(
                    .badRequest,
                    "text/plain",
                    Array("bad tap: limit: expected a positive integer\n".utf8),
                    head: head,
                    context: context
                )
                return
            }
            limit = value
        }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/x-ndjson")
        headers.add(name: "cache-control", value: "no-cache")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))),
            promise: nil
        )
        let subscriber = endpoints.taps.subscribe(filter)
        tap = (subscriber, limit, nil)
        context.writeAndFlush(
            wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: "{\"tapping\":true}\n")))),
            promise: nil
        )
        scheduleTapDrain(context: context)
    }

    private func scheduleTapDrain(context: ChannelHandlerContext) {
        tap?.timer = context.eventLoop.assumeIsolated().scheduleTask(in: Self.tapInterval) { [weak self] in
            self?.drainTap(context: context)
        }
    }

    private func drainTap(context: ChannelHandlerContext) {
        guard var tap else { return }
        var (events, dropped) = tap.subscriber.drain()
        if let remaining = tap.remaining, events.count > remaining { events.removeLast(events.count - remaining) }
        if !events.isEmpty || dropped > 0 {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            var buffer = context.channel.allocator.buffer(capacity: events.count * 200)
            for event in events {
                if let line = try? encoder.encode(event) {
                    buffer.writeBytes(line)
                    buffer.writeInteger(UInt8(ascii: "\n"))
                }
            }
            if dropped > 0 { buffer.writeString("{\"dropped\":\(dropped)}\n") }
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        if let remaining = tap.remaining {
            tap.remaining = remaining - events.count
            if tap.remaining! <= 0 {
                stopTap()
                context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
                return
            }
        }
        self.tap = tap
        scheduleTapDrain(context: context)
    }

    private func send(
        _ status: HTTPResponseStatus,
        _ contentType: String,
        _ body: [UInt8],
        head: HTTPRequestHead,
        context: ChannelHandlerContext
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: "close")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
            promise: nil
        )
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        if path == "/tap" || path == "/config", !isPrivileged(head) {
            refuse(head, context: context)
            return
        }
        if head.method == .GET, path == "/tap" {
            startTap(head, context: context)
            return
        }
        let status: HTTPResponseStatus
        let contentType: String
        let body: [UInt8]
        switch (head.method, path) {
        case (.GET, "/metrics"):
            status = .ok
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body = endpoints.metrics()
        case (.GET, "/config"):
            status = .ok
            contentType = "application/json"
            body = endpoints.config()
        case (.GET, "/live"):
            status = .ok
            contentType = "text/plain"
            body = Array("live\n".utf8)
        case (.GET, "/ready"):
            let readiness = endpoints.readiness()
            status = readiness.isReady ? .ok : .serviceUnavailable
            contentType = "text/plain"
            body = Array("\(readiness)\n".utf8)
        case (_, "/metrics"), (_, "/config"), (_, "/live"), (_, "/ready"):
            status = .methodNotAllowed
            contentType = "text/plain"
            body = Array("use GET\n".utf8)
        default:
            status = .notFound
            contentType = "text/plain"
            body = Array("not found: try /metrics, /ready, /live, /config, /tap\n".utf8)
        }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.count))
        if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
            promise: nil
        )
        if head.method != .HEAD {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))),
                promise: nil
            )
        }
        let keepAlive = head.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}

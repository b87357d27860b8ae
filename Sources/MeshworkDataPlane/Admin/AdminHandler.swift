import NIOCore
import NIOHTTP1

/// What the admin listener serves; the sidecar supplies the answers.
struct AdminEndpoints: Sendable {
    /// Prometheus text exposition.
    var metrics: @Sendable () -> [UInt8]
    /// The effective config as JSON.
    var config: @Sendable () -> [UInt8]
    /// Whether the sidecar takes traffic (false while starting or draining).
    var isReady: @Sendable () -> Bool
}

/// The admin listener: `/metrics`, `/ready`, `/live`, `/config`. Small answers built whole;
/// never on the data path.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoints: AdminEndpoints
    private var head: HTTPRequestHead?

    init(endpoints: AdminEndpoints) {
        self.endpoints = endpoints
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

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
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
            let ready = endpoints.isReady()
            status = ready ? .ok : .serviceUnavailable
            contentType = "text/plain"
            body = Array((ready ? "ready\n" : "not ready\n").utf8)
        case (_, "/metrics"), (_, "/config"), (_, "/live"), (_, "/ready"):
            status = .methodNotAllowed
            contentType = "text/plain"
            body = Array("use GET\n".utf8)
        default:
            status = .notFound
            contentType = "text/plain"
            body = Array("not found: try /metrics, /ready, /live, /config\n".utf8)
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

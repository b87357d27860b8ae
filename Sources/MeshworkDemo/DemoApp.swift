import AsyncHTTPClient
import MeshworkDataPlane
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization

/// The project's own small app: a fast HTTP/1.1 + h2c server used by the tests, the
/// benchmark and the demo. It can be told to be slow or to fail, per request by path.
///
/// Paths: `/` hello; `/echo` streams the request body back; `/status/<code>`;
/// `/delay/<ms>`; `/bytes/<n>`; `/headers` the request head as text; `/trailers` a
/// response with trailers; `/close` answers then closes the connection; `/reset` closes it without an answer.
public final class DemoApp: Sendable {
    public let name: String
    private let channel: any Channel
    private let counter: RequestCounter

    private init(name: String, channel: any Channel, counter: RequestCounter) {
        self.name = name
        self.channel = channel
        self.counter = counter
    }

    /// Requests this app has seen (heads received), so tests can prove a request never
    /// reached it.
    public var requestCount: Int { counter.value.load(ordering: .relaxed) }

    /// Connections accepted, so tests can prove a caller never got as far as connecting.
    /// `/delay/<ms>` calls received and not yet answered: a slow call is in flight here.
    public var sleepingCount: Int { counter.sleeping.load(ordering: .relaxed) }

    public var connectionCount: Int { counter.connections.load(ordering: .relaxed) }

    /// Makes every plain request (not /echo or upgrades) fail with `status` from now on;
    /// nil heals it. For tests and the demo's "one instance starts failing".
    public func setFailing(_ status: Int?) {
        counter.failureStatus.store(status ?? 0, ordering: .relaxed)
    }

    /// Makes `percent`% of plain requests fail with 500 from now on, spread evenly (exactly
    /// `percent` of every 100), while `/health` stays healthy: a bad new version. 0 heals it.
    public func setErrorRate(_ percent: Int) {
        counter.errorRate.store(min(100, max(0, percent)), ordering: .relaxed)
    }

    /// Makes `/` call the next service through `port` (its sidecar's upstream port) and
    /// answer `<name> -> <what it said>`, with a 502 when that call fails.
    public func setDownstream(port: Int, client: HTTPClient) {
        counter.downstream.withLockedValue { $0 = client }
        counter.downstreamPort.store(port, ordering: .relaxed)
    }

    /// Adds `delay` to every plain answer from now on (zero heals it).
    public func setSlow(_ delay: Duration) {
        let ms = delay.components.seconds * 1000 + delay.components.attoseconds / 1_000_000_000_000_000
        counter.extraDelay.store(Int(ms), ordering: .relaxed)
    }

    public var port: Int { channel.localAddress?.port ?? 0 }
    public var address: SocketAddress? { channel.localAddress }

    public static func start(
        name: String,
        host: String = "127.0.0.1",
        port: Int = 0,
        responseDelay: TimeAmount = .zero,
        group: any EventLoopGroup
    ) async throws -> DemoApp {
        let counter = RequestCounter()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                counter.connections.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPVersionSniffer { isHTTP2, channel in
                            let sync = channel.pipeline.syncOperations
                            if isHTTP2 {
                                _ = try sync.configureHTTP2Pipeline(
                                    mode: .server,
                                    connectionConfiguration: .init(),
                                    streamConfiguration: .init()
                                ) { stream in
                                    stream.eventLoop.makeCompletedFuture {
                                        try stream.pipeline.syncOperations.addHandlers(
                                            HTTP2FramePayloadToHTTP1ServerCodec(),
                                            DemoAppHandler(name: name, counter: counter, responseDelay: responseDelay)
                                        )
                                    }
                                }
                            } else {
                                let handler = DemoAppHandler(name: name, counter: counter, responseDelay: responseDelay)
                                try sync.configureHTTPServerPipeline(
                                    withServerUpgrade: (
                                        upgraders: [EchoUpgrader()],
                                        completionHandler: { context in
                                            let pipeline = context.pipeline.syncOperations
                                            if let app = try? pipeline.context(handlerType: DemoAppHandler.self) {
                                                pipeline.removeHandler(context: app, promise: nil)
                                            }
                                        }
                                    ),
                                    withErrorHandling: true
                                )
                                try sync.addHandler(handler)
                            }
                        }
                    )
                }
            }
            .bind(host: host, port: port)
            .get()
        return DemoApp(name: name, channel: channel, counter: counter)
    }

    public func stop() async {
        try? await channel.close()
    }
}

/// `Upgrade: echo`: after `101 Switching Protocols` every byte is sent back (a stand-in for
/// WebSocket that any raw client can check).
struct EchoUpgrader: HTTPServerProtocolUpgrader {
    let supportedProtocol = "echo"
    let requiredUpgradeHeaders: [String] = []

    func buildUpgradeResponse(
        channel: any Channel,
        upgradeRequest: HTTPRequestHead,
        initialResponseHeaders: HTTPHeaders
    ) -> EventLoopFuture<HTTPHeaders> {
        channel.eventLoop.makeSucceededFuture(initialResponseHeaders)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        context.eventLoop.makeCompletedFuture {
            try context.pipeline.syncOperations.addHandler(EchoHandler())
        }
    }
}

final class EchoHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

final class RequestCounter: Sendable {
    let value = Atomic<Int>(0)
    let connections = Atomic<Int>(0)
    /// When not 0, `/` calls `http://127.0.0.1:<port>/` (the local sidecar's port for the
    /// next service) and answers with what came back: the demo's call chain.
    let downstreamPort = Atomic<Int>(0)
    let downstream = NIOLockedValueBox<HTTPClient?>(nil)
    /// When not 0, every plain request is answered with this status (a failing instance).
    let failureStatus = Atomic<Int>(0)
    /// Milliseconds added to every plain answer from now on (an instance turning slow).
    let extraDelay = Atomic<Int>(0)
    /// `/delay` calls received and not yet answered.
    let sleeping = Atomic<Int>(0)
    /// Percent of plain requests (never `/health`) answered 500: a bad version that its
    /// health check does not catch.
    let errorRate = Atomic<Int>(0)
    let errorTick = Atomic<Int>(0)
}

final class DemoAppHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let name: String
    private let counter: RequestCounter
    /// Added before every non-streaming answer: a slow instance, for balancer tests and the demo.
    private let responseDelay: TimeAmount
    private var head: HTTPRequestHead?
    private var echoing = false
    private var received = 0

    init(name: String, counter: RequestCounter, responseDelay: TimeAmount = .zero) {
        self.name = name
        self.counter = counter
        self.responseDelay = responseDelay
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            received = 0
            counter.value.add(1, ordering: .relaxed)
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
                context.writeAndFlush(
                    wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))),
                    promise: nil
                )
            }
            if head.uri.hasPrefix("/echo") {
                echoing = true
                var headers = baseHeaders()
                if let type = head.headers.first(name: "content-type") {
                    headers.add(name: "content-type", value: type)
                }
                if let length = head.headers.first(name: "content-length") {
                    headers.add(name: "content-length", value: length)
                }
                context.writeAndFlush(
                    wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))),
                    promise: nil
                )
            }
        case .body(let body):
            received += body.readableBytes
            if echoing { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        case .end(let trailers):
            guard let head else { return }
            self.head = nil
            if echoing {
                echoing = false
                context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
                return
            }
            let delay = responseDelay + .milliseconds(Int64(counter.extraDelay.load(ordering: .relaxed)))
            if delay > .zero {
                context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
                    self.respond(head, context: context)
                }
            } else {
                respond(head, context: context)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    private func baseHeaders() -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "x-served-by", value: name)
        return headers
    }

    private func respond(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let parts = head.uri.split(separator: "?", maxSplits: 1)[0].split(separator: "/")
        let first = parts.first.map(String.init) ?? ""
        let argument = parts.count > 1 ? Int(parts[1]) : nil
        var failure = counter.failureStatus.load(ordering: .relaxed)
        let rate = counter.errorRate.load(ordering: .relaxed)
        if failure == 0, rate > 0, first != "health" {
            let n = counter.errorTick.wrappingAdd(1, ordering: .relaxed).newValue
            if n * rate / 100 != (n - 1) * rate / 100 { failure = 500 }
        }
        if failure != 0 {
            let status = HTTPResponseStatus(statusCode: failure)
            send(status: status, body: "\(name) failing with \(failure)\n", head, context)
            return
        }
        switch first {
        case "status":
            send(
                status: HTTPResponseStatus(statusCode: argument ?? 500),
                body: "status \(argument ?? 500)\n",
                head,
                context
            )
        case "delay":
            let ms = argument ?? 100
            counter.sleeping.add(1, ordering: .relaxed)
            context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(ms))) {
                self.counter.sleeping.subtract(1, ordering: .relaxed)
                self.send(status: .ok, body: "slept \(ms)ms\n", head, context)
            }
        case "bytes":
            let count = min(argument ?? 1024, 64 << 20)
            var headers = baseHeaders()
            headers.add(name: "content-length", value: String(count))
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))),
                promise: nil
            )
            var remaining = count
            while remaining > 0 {
                let n = min(remaining, 64 * 1024)
                var buffer = context.channel.allocator.buffer(capacity: n)
                buffer.writeRepeatingByte(UInt8(ascii: "x"), count: n)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
                remaining -= n
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        case "headers":
            var text = "\(head.method) \(head.uri) HTTP/\(head.version.major).\(head.version.minor)\n"
            for (name, value) in head.headers { text += "\(name.lowercased()): \(value)\n" }
            text += "body-bytes: \(received)\n"
            send(status: .ok, body: text, head, context)
        case "trailers":
            var headers = baseHeaders()
            headers.add(name: "trailer", value: "x-checksum")
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))),
                promise: nil
            )
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: "with trailers\n")))),
                promise: nil
            )
            var trailers = HTTPHeaders()
            trailers.add(name: "x-checksum", value: "abc123")
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
        case "close":
            send(status: .ok, body: "bye\n", head, context, close: true)
        case "reset":
            // Read the whole request, answer nothing: a connection lost mid-exchange.
            context.close(promise: nil)
        case "" where counter.downstreamPort.load(ordering: .relaxed) != 0:
            callDownstream(head, context: context)
        default:
            send(status: .ok, body: "hello from \(name)\n", head, context)
        }
    }

    private func callDownstream(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let port = counter.downstreamPort.load(ordering: .relaxed)
        guard let client = counter.downstream.withLockedValue({ $0 }),
            var request = try? HTTPClient.Request(url: "http://127.0.0.1:\(port)/", method: .GET)
        else {
            send(status: .badGateway, body: "\(name): no downstream\n", head, context)
            return
        }
        // Like any app in a mesh, it passes the trace context on to the calls it makes.
        for header in ["traceparent", "tracestate"] {
            if let value = head.headers.first(name: header) { request.headers.add(name: header, value: value) }
        }
        let name = self.name
        client.execute(request: request, eventLoop: .delegate(on: context.eventLoop))
            .hop(to: context.eventLoop)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let response):
                    let text = response.body.map { String(buffer: $0) } ?? ""
                    let status: HTTPResponseStatus = response.status.code >= 500 ? .badGateway : response.status
                    self.send(status: status, body: "\(name) -> \(text)", head, context)
                case .failure(let error):
                    self.send(status: .badGateway, body: "\(name): downstream failed: \(error)\n", head, context)
                }
            }
    }

    private func send(
        status: HTTPResponseStatus,
        body: String,
        _ request: HTTPRequestHead,
        _ context: ChannelHandlerContext,
        close: Bool = false
    ) {
        var headers = baseHeaders()
        headers.add(name: "content-type", value: "text/plain")
        headers.add(name: "content-length", value: String(body.utf8.count))
        if close { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
            promise: nil
        )
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close || !request.isKeepAlive {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }
}

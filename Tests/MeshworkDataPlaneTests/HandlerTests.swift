import NIOCore
import NIOEmbedded
import NIOHTTP1
import Prometheus
import Testing

@testable import MeshworkDataPlane

/// Handlers on `EmbeddedChannel`: no sockets, time advanced by hand.
@Suite("Handlers on EmbeddedChannel")
struct HandlerTests {
    // MARK: HTTPVersionSniffer

    private final class Decision: @unchecked Sendable {
        var isHTTP2: Bool?
    }

    @Test func snifferTellsHTTP1FromTheFirstBytesAndReplaysThem() throws {
        let decision = Decision()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(HTTPVersionSniffer { isHTTP2, _ in decision.isHTTP2 = isHTTP2 })
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        #expect(decision.isHTTP2 == false)
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        // The sniffer has left: later bytes pass untouched.
        try channel.writeInbound(ByteBuffer(string: "Host: x\r\n\r\n"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "Host: x\r\n\r\n"))
        #expect(try channel.finish().isClean)
    }

    @Test func snifferWaitsForTheWholePrefaceAcrossReads() throws {
        let decision = Decision()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(HTTPVersionSniffer { isHTTP2, _ in decision.isHTTP2 = isHTTP2 })
        let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        try channel.writeInbound(ByteBuffer(string: String(preface.prefix(10))))
        #expect(decision.isHTTP2 == nil)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        try channel.writeInbound(ByteBuffer(string: String(preface.dropFirst(10)) + "frames"))
        #expect(decision.isHTTP2 == true)
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: preface + "frames"))
        _ = try channel.finish()
    }

    @Test func snifferDecidesHTTP1OnAShortMismatch() throws {
        let decision = Decision()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(HTTPVersionSniffer { isHTTP2, _ in decision.isHTTP2 = isHTTP2 })
        try channel.writeInbound(ByteBuffer(string: "PRX"))
        #expect(decision.isHTTP2 == false)
        _ = try channel.finish()
    }

    // MARK: GlueHandler

    @Test func glueSplicesBytesBothWaysAndClosesTogether() throws {
        let loop = EmbeddedEventLoop()
        let left = EmbeddedChannel(loop: loop)
        let right = EmbeddedChannel(loop: loop)
        let leftGlue = GlueHandler()
        let rightGlue = GlueHandler()
        try left.pipeline.syncOperations.addHandler(leftGlue)
        try right.pipeline.syncOperations.addHandler(rightGlue)
        // Bytes that arrive before pairing are kept, not lost.
        try left.writeInbound(ByteBuffer(string: "early"))
        GlueHandler.pair(leftGlue, rightGlue)
        #expect(try right.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "early"))
        try left.writeInbound(ByteBuffer(string: "ping"))
        #expect(try right.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "ping"))
        try right.writeInbound(ByteBuffer(string: "pong"))
        #expect(try left.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "pong"))
        try left.close().wait()
        loop.run()
        #expect(!right.isActive)
    }

    // MARK: ProxyHandler

    private func proxyChannel(headerRead: TimeAmount = .seconds(10)) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let settings = ProxySettings(
            route: .host(domain: "mesh"),
            metrics: ListenerMetrics(name: "test", kind: "http_proxy", registry: PrometheusCollectorRegistry()),
            headerReadTimeout: headerRead,
            idleTimeout: .seconds(60),
            maxHeaderBytes: 4096,
            restoresProtocol: false
        )
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: false)
        try channel.pipeline.syncOperations.addHandler(
            ProxyHandler(
                settings: settings,
                loop: LoopContext(loop: channel.embeddedEventLoop, index: 0)
            )
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func readAll(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text
    }

    @Test func unknownServiceIsAnswered404WithTheReason() throws {
        let channel = try proxyChannel()
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: billing.mesh\r\n\r\n"))
        let answer = try readAll(channel)
        #expect(answer.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(answer.contains("x-meshwork-error: no_route\r\n"))
        #expect(answer.hasSuffix("no_route\n"))
        #expect(channel.isActive, "a request without a body keeps its connection")
        _ = try? channel.finish()
    }

    @Test func headerTimeoutAnswers408AndCloses() throws {
        let channel = try proxyChannel(headerRead: .milliseconds(500))
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHo"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(499))
        #expect(try readAll(channel).isEmpty)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        let answer = try readAll(channel)
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), "\(answer)")
        #expect(answer.contains("x-meshwork-error: header_timeout"))
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test func conflictingFramingIs400() throws {
        let channel = try proxyChannel()
        // The decoder's error is handled by the proxy; EmbeddedChannel may rethrow it.
        _ = try? channel.writeInbound(
            ByteBuffer(string: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        )
        let answer = try readAll(channel)
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.contains("x-meshwork-error: bad_request"))
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test func hopByHopHeadersAreRemoved() {
        var headers = HTTPHeaders([
            ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("TE", "trailers"), ("X-Keep", "yes"),
            ("Proxy-Connection", "keep-alive"),
        ])
        ProxyHandler.removeHopByHop(&headers)
        #expect(headers.map(\.name) == ["X-Keep"])
    }
}

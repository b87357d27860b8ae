import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Prometheus
import Testing

@testable import MeshworkDataPlane

/// `HTTP2ClientStreams` and `HTTP2ServerStreams` on an `EmbeddedChannel`: frames in and out
/// directly (NIO's `NIOHTTP2Handler`, which sits before them in a real pipeline, is left
/// out, so every frame and event it would pass on is fed by hand).
@Suite("HTTP/2 streams without child channels")
struct HTTP2StreamsTests {
    private final class Recorder: UpstreamDelegate {
        var parts: [HTTPClientResponsePart] = []
        var failures: [MeshError] = []
        var readCompletes = 0
        var writabilityChanges: [Bool] = []
        var downstreamIsWritable = true

        func upstreamReceived(_ part: HTTPClientResponsePart) { parts.append(part) }
        func upstreamReadComplete() { readCompletes += 1 }
        func upstreamFailed(_ error: MeshError) { failures.append(error) }
        func upstreamWritabilityChanged(isWritable: Bool) { writabilityChanges.append(isWritable) }
    }

    private func makeChannel() throws -> (EmbeddedChannel, HTTP2ClientStreams) {
        let channel = EmbeddedChannel()
        let streams = HTTP2ClientStreams(scheme: "https", streamWindow: 1 << 20)
        try channel.pipeline.syncOperations.addHandler(streams)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, streams)
    }

    private func get(_ path: String, headers: [(String, String)] = [("Host", "orders")]) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: HTTPHeaders(headers))
    }

    /// Opens a stream for `delegate`, sends `GET /` on it and takes its HEADERS frame out.
    private func sendGet(
        on streams: HTTP2ClientStreams,
        _ channel: EmbeddedChannel,
        to delegate: Recorder
    ) throws -> HTTP2StreamUpstream {
        let stream = streams.makeStream(endpoint: nil)
        stream.begin(delegate: delegate)
        stream.write(.head(get("/")))
        stream.write(.end(nil))
        stream.flush()
        _ = try channel.readOutbound(as: HTTP2Frame.self)
        return stream
    }

    @Test func aGetIsOneHeadersFrameWithEndStreamAndStreamIDsIncrease() throws {
        let (channel, streams) = try makeChannel()
        for path in ["/a", "/b"] {
            let stream = streams.makeStream(endpoint: nil)
            stream.begin(delegate: Recorder())
            stream.write(
                .head(
                    get(
                        path,
                        headers: [
                            ("Host", "orders:9001"), ("User-Agent", "curl"), ("connection", "keep-alive"),
                            ("Transfer-Encoding", "chunked"), ("te", "trailers"), ("x-id", "7"),
                        ]
                    )
                )
            )
            stream.write(.end(nil))
            stream.flush()
        }
        let first = try #require(try channel.readOutbound(as: HTTP2Frame.self))
        let second = try #require(try channel.readOutbound(as: HTTP2Frame.self))
        #expect(try channel.readOutbound(as: HTTP2Frame.self) == nil)
        #expect(first.streamID == 1)
        #expect(second.streamID == 3)
        guard case .headers(let headers) = first.payload else {
            Issue.record("expected HEADERS, got \(first.payload)")
            return
        }
        #expect(headers.endStream)
        let fields = headers.headers.map { "\($0.name): \($0.value)" }
        #expect(
            fields == [
                ":method: GET", ":scheme: https", ":authority: orders:9001", ":path: /a", "user-agent: curl",
                "te: trailers", "x-id: 7",
            ]
        )
        _ = try channel.finish()
    }

    @Test func aBodyEndsOnItsLastDataFrameAndTrailersEndTheStream() throws {
        let (channel, streams) = try makeChannel()
        let stream = streams.makeStream(endpoint: nil)
        stream.begin(delegate: Recorder())
        var head = get("/upload")
        head.method = .POST
        stream.write(.head(head))
        stream.write(.body(.byteBuffer(ByteBuffer(string: "one"))))
        stream.write(.body(.byteBuffer(ByteBuffer(string: "two"))))
        stream.write(.end(nil))
        stream.flush()
        var kinds: [String] = []
        while let frame = try channel.readOutbound(as: HTTP2Frame.self) {
            switch frame.payload {
            case .headers(let headers): kinds.append("HEADERS\(headers.endStream ? "+END" : "")")
            case .data(let data): kinds.append("DATA(\(data.data.readableBytes))\(data.endStream ? "+END" : "")")
            default: kinds.append("other")
            }
        }
        #expect(kinds == ["HEADERS", "DATA(3)", "DATA(3)+END"])

        let withTrailers = streams.makeStream(endpoint: nil)
        withTrailers.begin(delegate: Recorder())
        withTrailers.write(.head(head))
        withTrailers.write(.body(.byteBuffer(ByteBuffer(string: "x"))))
        withTrailers.write(.end(HTTPHeaders([("Grpc-Status", "0")])))
        withTrailers.flush()
        var last: HTTP2Frame?
        while let frame = try channel.readOutbound(as: HTTP2Frame.self) { last = frame }
        guard case .headers(let trailers) = last?.payload else {
            Issue.record("expected trailers, got \(String(describing: last))")
            return
        }
        #expect(trailers.endStream)
        #expect(trailers.headers.first(name: "grpc-status") == "0")
        _ = try channel.finish()
    }

    @Test func responseFramesBecomeResponsePartsAndOneReadCompletePerBatch() throws {
        let (channel, streams) = try makeChannel()
        let recorder = Recorder()
        let stream = try sendGet(on: streams, channel, to: recorder)

        // One read batch of three frames (writeInbound would end a batch after each).
        let block = HPACKHeaders([(":status", "200"), ("x-served-by", "orders-1")])
        channel.pipeline.fireChannelRead(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: block))))
        channel.pipeline.fireChannelRead(
            HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "ok")))))
        )
        channel.pipeline.fireChannelRead(
            HTTP2Frame(streamID: 1, payload: .headers(.init(headers: HPACKHeaders([("x-sum", "1")]), endStream: true)))
        )
        channel.pipeline.fireChannelReadComplete()
        #expect(recorder.parts.count == 3)
        guard case .head(let head) = recorder.parts.first, case .body(let body) = recorder.parts[1],
            case .end(let trailers) = recorder.parts[2]
        else {
            Issue.record("unexpected parts \(recorder.parts)")
            return
        }
        #expect(head.status == .ok)
        #expect(head.headers.first(name: "x-served-by") == "orders-1")
        // No content-length and a body to come: the HTTP/1 side frames it chunked.
        #expect(head.headers.first(name: "transfer-encoding") == "chunked")
        #expect(String(buffer: body) == "ok")
        #expect(trailers?.first(name: "x-sum") == "1")
        #expect(recorder.readCompletes == 1)
        // The stream ended cleanly: NIO closes it, nobody fails, no reset is sent.
        stream.finish()
        channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 1, reason: nil))
        #expect(recorder.failures.isEmpty)
        #expect(try channel.readOutbound(as: HTTP2Frame.self) == nil)
        _ = try channel.finish()
    }

    @Test func aBadStatusIsAProtocolErrorAndResetsTheStream() throws {
        let (channel, streams) = try makeChannel()
        let recorder = Recorder()
        _ = try sendGet(on: streams, channel, to: recorder)
        try channel.writeInbound(
            HTTP2Frame(streamID: 1, payload: .headers(.init(headers: HPACKHeaders([(":status", "2000")]))))
        )
        #expect(recorder.failures == [.protocolError])
        let reset = try #require(try channel.readOutbound(as: HTTP2Frame.self))
        #expect(reset.streamID == 1)
        guard case .rstStream(let code) = reset.payload else {
            Issue.record("expected RST_STREAM, got \(reset.payload)")
            return
        }
        #expect(code == .protocolError)
        _ = try channel.finish()
    }

    @Test func aStreamClosedBeforeItsResponseFailsTheExchangeOnce() throws {
        let (channel, streams) = try makeChannel()
        var closed = 0
        streams.onStreamClosed = { closed += 1 }
        let recorder = Recorder()
        let stream = streams.makeStream(endpoint: nil)
        stream.begin(delegate: recorder)
        stream.write(.head(get("/")))
        stream.write(.end(nil))
        stream.flush()
        channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 1, reason: .refusedStream))
        channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: 1, reason: .refusedStream))
        #expect(recorder.failures == [.upstreamReset])
        #expect(closed == 1)
        #expect(!stream.isActive)
        _ = try channel.finish()
    }

    @Test func anUnfinishedExchangeIsResetAndAnUnsentOneIsForgotten() throws {
        let (channel, streams) = try makeChannel()
        var closed = 0
        streams.onStreamClosed = { closed += 1 }
        let unsent = streams.makeStream(endpoint: nil)
        unsent.begin(delegate: Recorder())
        unsent.finish()
        #expect(closed == 1)
        #expect(try channel.readOutbound(as: HTTP2Frame.self) == nil)

        let started = streams.makeStream(endpoint: nil)
        started.begin(delegate: Recorder())
        started.write(.head(get("/")))
        started.flush()
        _ = try channel.readOutbound(as: HTTP2Frame.self)
        started.finish()
        #expect(closed == 2)
        let reset = try #require(try channel.readOutbound(as: HTTP2Frame.self))
        guard case .rstStream(let code) = reset.payload else {
            Issue.record("expected RST_STREAM, got \(reset.payload)")
            return
        }
        #expect(reset.streamID == 1)
        #expect(code == .cancel)
        _ = try channel.finish()
    }

    @Test func windowsAreToppedUpOnceHalfUsedButHeldForASlowDownstream() throws {
        let (channel, streams) = try makeChannel()
        let recorder = Recorder()
        let stream = try sendGet(on: streams, channel, to: recorder)
        try channel.writeInbound(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200"]))))

        func increments() throws -> [String] {
            var out: [String] = []
            while let frame = try channel.readOutbound(as: HTTP2Frame.self) {
                if case .windowUpdate(let increment) = frame.payload {
                    out.append("\(Int(frame.streamID)):\(increment)")
                }
            }
            return out
        }
        // Less than half used: nothing; more than half: back to the full window.
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 800_000, outboundWindowSize: nil)
        )
        #expect(try increments() == [])
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 400_000, outboundWindowSize: nil)
        )
        #expect(try increments() == ["1:\((1 << 20) - 400_000)"])
        // The connection window has its own, larger target.
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: .rootStream, inboundWindowSize: 1000, outboundWindowSize: nil)
        )
        #expect(try increments() == ["0:\(HTTP2Windows.connectionWindow - 1000)"])

        // Bytes handed to a downstream that cannot take them hold the stream's window...
        recorder.downstreamIsWritable = false
        try channel.writeInbound(
            HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "x")))))
        )
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 100, outboundWindowSize: nil)
        )
        #expect(try increments() == [])
        // ...until it drains.
        recorder.downstreamIsWritable = true
        stream.resumeReading()
        #expect(try increments() == ["1:\((1 << 20) - 100)"])
        _ = try channel.finish()
    }

    @Test func requestBodiesStopTheReaderAboveTheHighWatermarkUntilSent() throws {
        let (channel, streams) = try makeChannel()
        let recorder = Recorder()
        let stream = streams.makeStream(endpoint: nil)
        stream.begin(delegate: recorder)
        var head = get("/upload")
        head.method = .POST
        stream.write(.head(head))
        let chunk = ByteBuffer(repeating: 0x61, count: 16 * 1024)
        // EmbeddedChannel completes write promises when flushed: write without flushing.
        for _ in 0..<4 { stream.write(.body(.byteBuffer(chunk))) }
        // Three chunks written (the fourth is held to carry END_STREAM): 48 KiB unsent.
        #expect(stream.isWritable)
        stream.write(.body(.byteBuffer(chunk)))
        // Four written: 64 KiB, the high watermark.
        #expect(!stream.isWritable)
        #expect(recorder.writabilityChanges.isEmpty)
        channel.flush()
        #expect(stream.isWritable)
        #expect(recorder.writabilityChanges == [true])
        _ = try channel.finish()
    }

    @Test func noWindowUpdateForAStreamWhoseResponseEnded() throws {
        let (channel, streams) = try makeChannel()
        let recorder = Recorder()
        let stream = try sendGet(on: streams, channel, to: recorder)
        try channel.writeInbound(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200"]))))
        try channel.writeInbound(
            HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "x")), endStream: true)))
        )
        #expect(recorder.parts.count == 3)
        // NIO reports the window after the last DATA; a WINDOW_UPDATE now would be refused.
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 100, outboundWindowSize: nil)
        )
        stream.resumeReading()
        let frame = try channel.readOutbound(as: HTTP2Frame.self)
        #expect(frame == nil, "\(String(describing: frame))")
        _ = try channel.finish()
    }

    // MARK: the server side (HTTP2ServerStreams)

    /// An accepted connection's streams, each driving a `ProxyHandler` that has no route
    /// (so it answers every request itself).
    private func makeServer() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let settings = ProxySettings(
            route: .host(domain: "mesh"),
            metrics: ListenerMetrics(name: "test", kind: "inbound", registry: PrometheusCollectorRegistry()),
            headerReadTimeout: .seconds(10),
            idleTimeout: .seconds(60),
            maxHeaderBytes: 4096,
            restoresProtocol: true
        )
        let streams = HTTP2ServerStreams(
            settings: settings,
            loop: LoopContext(loop: channel.embeddedEventLoop, index: 0),
            peer: nil,
            streamWindow: 1 << 20
        )
        try channel.pipeline.syncOperations.addHandler(streams)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private let postHeaders = HPACKHeaders([
        (":method", "POST"), (":scheme", "https"), (":authority", "orders"), (":path", "/"),
    ])

    /// Frames written to the wire since the last call, as "stream:kind".
    private func written(_ channel: EmbeddedChannel) throws -> [String] {
        var out: [String] = []
        while let frame = try channel.readOutbound(as: HTTP2Frame.self) {
            switch frame.payload {
            case .windowUpdate(let increment): out.append("\(Int(frame.streamID)):window+\(increment)")
            case .rstStream(let code): out.append("\(Int(frame.streamID)):rst \(code.networkCode)")
            case .headers: out.append("\(Int(frame.streamID)):headers")
            case .data: out.append("\(Int(frame.streamID)):data")
            default: out.append("\(Int(frame.streamID)):other")
            }
        }
        return out
    }

    @Test func requestWindowsAreToppedUpUntilTheCallerEndsItsSide() throws {
        let channel = try makeServer()
        try channel.writeInbound(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: postHeaders))))
        #expect(try written(channel).contains("1:headers"))  // the proxy's own answer
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 100, outboundWindowSize: nil)
        )
        #expect(try written(channel) == ["1:window+\((1 << 20) - 100)"])
        try channel.writeInbound(
            HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "x")), endStream: true)))
        )
        // Half-closed by the caller: NIO would refuse a WINDOW_UPDATE as a stream error
        // (which once ended a 3 MiB echo half-way).
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 100, outboundWindowSize: nil)
        )
        #expect(try written(channel) == [])
        _ = try channel.finish()
    }

    @Test func aFrameNIORefusedResetsItsStreamSoThePeerStopsWaiting() throws {
        let channel = try makeServer()
        try channel.writeInbound(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: postHeaders))))
        _ = try written(channel)
        channel.pipeline.fireErrorCaught(
            NIOHTTP2Errors.streamError(
                streamID: 1,
                baseError: NIOHTTP2Errors.badStreamStateTransition(from: .halfClosedRemoteLocalActive)
            )
        )
        // (It goes on to the end of the pipeline, where EmbeddedChannel keeps it.)
        #expect(throws: NIOHTTP2Errors.StreamError.self) { try channel.throwIfErrorCaught() }
        #expect(try written(channel) == [])  // not inside the write that failed
        channel.embeddedEventLoop.run()
        #expect(try written(channel) == ["1:rst \(HTTP2ErrorCode.internalError.networkCode)"])
        // The stream is gone: its late frames reach no exchange.
        channel.pipeline.fireUserInboundEventTriggered(
            NIOHTTP2WindowUpdatedEvent(streamID: 1, inboundWindowSize: 100, outboundWindowSize: nil)
        )
        #expect(try written(channel) == [])
        _ = try channel.finish()
    }

    // MARK: the server side's conversions (HTTP2ServerStream)

    @Test func requestBlocksBecomeHTTP1HeadsAsNIOsCodecMadeThem() throws {
        let get = try #require(
            HTTP2ServerStream.requestHead(
                HPACKHeaders([
                    (":method", "GET"), (":scheme", "https"), (":authority", "orders"), (":path", "/a?b=1"),
                    ("x-id", "7"),
                ]),
                endStream: true
            )
        )
        #expect(get.method == .GET)
        #expect(get.uri == "/a?b=1")
        #expect(get.headers.first(name: "host") == "orders")
        #expect(get.headers.first(name: "x-id") == "7")
        #expect(!get.headers.contains(name: "content-length"))

        let post = HPACKHeaders([(":method", "POST"), (":scheme", "http"), (":authority", "o"), (":path", "/")])
        let streaming = try #require(HTTP2ServerStream.requestHead(post, endStream: false))
        #expect(streaming.headers.first(name: "transfer-encoding") == "chunked")
        let empty = try #require(HTTP2ServerStream.requestHead(post, endStream: true))
        #expect(empty.headers.first(name: "content-length") == "0")

        // A Host field wins over :authority, as in NIO's codec.
        let withHost = try #require(
            HTTP2ServerStream.requestHead(
                HPACKHeaders([
                    (":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("host", "b"),
                ]),
                endStream: true
            )
        )
        #expect(withHost.headers[canonicalForm: "host"] == ["b"])
    }

    @Test(arguments: [
        [(":scheme", "http"), (":authority", "o"), (":path", "/")],  // no :method
        [(":method", "GET"), (":scheme", "http"), (":authority", "o")],  // no :path
        [(":method", "GET"), (":authority", "o"), (":path", "/")],  // no :scheme
        [(":method", "GET"), (":method", "POST"), (":scheme", "http"), (":path", "/")],  // twice
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":status", "200")],  // not a request's
    ])
    func malformedRequestBlocksAreRefused(_ fields: [(String, String)]) {
        #expect(HTTP2ServerStream.requestHead(HPACKHeaders(fields), endStream: true) == nil)
    }

    @Test func responseHeadsBecomeBlocksWithoutConnectionFields() {
        let head = HTTPResponseHead(
            version: .http1_1,
            status: .created,
            headers: HTTPHeaders([
                ("Content-Type", "text/plain"), ("Connection", "close"), ("Keep-Alive", "5"),
                ("Transfer-Encoding", "chunked"), ("x-served-by", "orders-1"),
            ])
        )
        let fields = HTTP2ServerStream.responseHeaders(head).map { "\($0.name): \($0.value)" }
        #expect(fields == [":status: 201", "content-type: text/plain", "x-served-by: orders-1"])
    }
}

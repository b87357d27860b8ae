import MeshworkModel
import NIOCore
import NIOHTTP1

/// What one exchange records about itself: its edge (inbound by the caller's service, from
/// its certificate; outbound by the called service), its span when the trace is sampled,
/// its tap event and access log line. Kept per downstream and reset by each request head;
/// what only tracing, taps and the access log need is read off the head only when one of
/// them is on.
struct ExchangeTelemetry {
    private(set) var trace: ExchangeTrace?
    private var method = HTTPMethod.GET
    /// The request target as it came (kept by reference); its path is cut out only for
    /// what records it.
    private var uri = ""
    private var wallStart: UInt64 = 0
    /// Body bytes of the exchange, both ways.
    var requestBytes = 0
    var responseBytes = 0
    /// The called service of an outbound exchange.
    var calledService: String?
    /// The route rule that decided it (`route/rule`), when a route did.
    var route: String?
    /// The version subset (cluster name) the rule sent it to, when it was one.
    var backend: String?

    /// A request head arrived: a new exchange to record, and its trace begun.
    mutating func begin(_ head: HTTPRequestHead, loop: LoopContext) {
        requestBytes = 0
        responseBytes = 0
        calledService = nil
        route = nil
        backend = nil
        trace = nil
        guard loop.tracer != nil || loop.accessLog != nil || loop.taps != nil else { return }
        method = head.method
        uri = head.uri
        trace = loop.tracer?.begin(head.headers)
        if loop.accessLog != nil {
            wallStart = trace.map { $0.startUnixNanos } ?? 0
            if wallStart == 0 { wallStart = LoopTracer.unixNanos() }
        }
    }

    /// Records the finished exchange. `caller`: the authenticated peer of an inbound one.
    func record(
        status: HTTPResponseStatus,
        nanoseconds: Int64,
        error: MeshError? = nil,
        inbound: Bool,
        caller: ConnectionPeer?,
        loop: LoopContext
    ) {
        let peerName = inbound ? (caller?.serviceName ?? "unauthenticated") : (calledService ?? "unrouted")
        let sampled = trace?.sampled == true && loop.tracer != nil
        let path = sampled || loop.taps != nil || loop.accessLog != nil ? Self.path(of: uri) : ""
        if let shard = loop.edges {
            shard.record(
                EdgeKey(direction: inbound ? .inbound : .outbound, peer: peerName, route: route, backend: backend),
                EdgeExchange(
                    status: Int(status.code),
                    micros: UInt64(max(0, nanoseconds / 1000)),
                    requestBytes: UInt64(requestBytes),
                    responseBytes: UInt64(responseBytes),
                    meshError: error?.reason
                )
            )
        }
        if sampled, let trace, let tracer = loop.tracer {
            tracer.shard.record(
                SpanRecord(
                    traceID: trace.traceID,
                    spanID: trace.spanID,
                    parentSpanID: trace.parentSpanID,
                    kind: inbound ? .server : .client,
                    method: method.rawValue,
                    path: path,
                    peer: peerName,
                    status: Int(status.code),
                    meshError: error?.reason,
                    route: route,
                    startUnixNanos: trace.startUnixNanos,
                    endUnixNanos: trace.startUnixNanos + UInt64(max(0, nanoseconds))
                )
            )
        }
        guard loop.taps != nil || loop.accessLog != nil else { return }
        let record = ExchangeRecord(
            direction: inbound ? .inbound : .outbound,
            source: inbound ? peerName : loop.service,
            target: inbound ? loop.service : peerName,
            method: method.rawValue,
            path: path,
            status: Int(status.code),
            nanoseconds: nanoseconds,
            meshError: error?.reason,
            traceID: trace?.traceID,
            spanID: trace.flatMap { $0.sampled ? $0.spanID : nil },
            route: route
        )
        loop.taps?.offer(record, now: loop.loop.now.uptimeNanoseconds)
        loop.accessLog?.log(record, unixNanos: wallStart)
    }

    /// The path of a request target: origin form, without the query string (it may carry
    /// secrets).
    static func path(of uri: String) -> String {
        let target = ProxyRoute.absoluteURIAuthority(uri) != nil ? ProxyRoute.originForm(uri) : uri
        guard let query = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
        return String(target[..<query])
    }
}

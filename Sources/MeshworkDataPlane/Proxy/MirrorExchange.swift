import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOHTTP1

/// A mirrored copy of a request (a route's `RequestMirror`), fire and forget: it collects
/// the caller's body as it streams past (references to the same buffers, up to
/// `RouteFilter.Mirror.maxBodyBytes`), and once the caller's request has ended it sends the
/// copy to the mirror's cluster and reads its answer only to discard it. The caller's
/// exchange never waits for it, never sees its answer or its failure, and is not slowed
/// by its body: what became of each copy is counted in
/// `meshwork_cluster_mirror_requests_total`.
///
/// The copy goes through the mirror cluster's own admission (its breaker bounds how many
/// copies are in flight), balancer and timeout. Its host gets Envoy's `-shadow` suffix, so
/// the mirror's app can tell copies from real traffic. Lives on one event loop; it holds
/// itself while its copy is in flight.
final class MirrorExchange: UpstreamDelegate {
    private let cluster: LoopCluster
    private let loop: LoopContext
    private var head: HTTPRequestHead
    private var body: [ByteBuffer] = []
    private var bodyBytes = 0
    private var trailers: HTTPHeaders?
    private var upstream: (any Upstream)?
    private var timer: Scheduled<Void>?
    private var started = NIODeadline.distantPast
    private var status: Int?
    private var admitted = false
    private var done = false
    /// Set while the copy is in flight: nothing else holds a mirror after its caller let go.
    private var holdsItself: MirrorExchange?

    init(_ head: HTTPRequestHead, cluster: LoopCluster, loop: LoopContext) {
        var head = head
        if let host = head.headers.first(name: "host") {
            head.headers.replaceOrAdd(name: "host", value: Self.shadow(host))
        }
        self.head = head
        self.cluster = cluster
        self.loop = loop
    }

    /// `host[:port]` with `-shadow` after the host: `orders:8080` -> `orders-shadow:8080`.
    static func shadow(_ authority: String) -> String {
        if authority.hasSuffix("]") || !authority.contains(":") { return authority + "-shadow" }
        guard let colon = authority.lastIndex(of: ":") else { return authority + "-shadow" }
        return authority[..<colon] + "-shadow" + authority[colon...]
    }

    /// A part of the caller's body. False: the body is too large to mirror; the copy is
    /// given up (and counted) and the caller should drop it.
    func append(_ buffer: ByteBuffer) -> Bool {
        bodyBytes += buffer.readableBytes
        guard bodyBytes <= RouteFilter.Mirror.maxBodyBytes else {
            body = []
            cluster.metrics.countMirror(.bodyTooLarge)
            return false
        }
        body.append(buffer)
        return true
    }

    /// The caller went away before its request ended: nothing is sent.
    func abandon() {
        body = []
        cluster.metrics.countMirror(.abandoned)
    }

    /// The caller's request ended: the copy leaves now.
    func send(trailers: HTTPHeaders?) {
        self.trailers = trailers
        if cluster.admit() != nil {
            cluster.metrics.countMirror(.refused)
            return
        }
        admitted = true
        holdsItself = self
        started = loop.loop.now
        let timeout = cluster.requestTimeout
        if cluster.isMesh { Deadlines.propagate(timeout, in: &head.headers) }
        timer = loop.loop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            self?.end(.timeout)
        }
        // Held until the pool answers (not weakly): a connection made after the timeout
        // must still be given back, or its pool slot and in-flight count would leak.
        cluster.acquire { result, _ in
            self.acquired(result)
        }
    }

    private func acquired(_ result: Result<any Upstream, MeshError>) {
        switch result {
        case .failure:
            end(.failed)
        case .success(let upstream):
            guard !done else {
                // Timed out while the connection was being made: give it back untouched.
                reportLatency(upstream)
                upstream.finish()
                return
            }
            self.upstream = upstream
            upstream.begin(delegate: self)
            upstream.write(.head(head))
            for part in body { upstream.write(.body(.byteBuffer(part))) }
            body = []
            upstream.write(.end(trailers))
            upstream.flush()
        }
    }

    private func reportLatency(_ upstream: any Upstream) {
        guard let index = upstream.endpointIndex else { return }
        upstream.endpointIndex = nil
        cluster.requestFinished(index, nanoseconds: (loop.loop.now - started).nanoseconds)
    }

    /// Counts the copy's outcome once and lets go of everything it holds.
    private func end(_ result: MirrorResult) {
        guard !done else { return }
        done = true
        cluster.metrics.countMirror(result)
        timer?.cancel()
        timer = nil
        if let upstream {
            self.upstream = nil
            if result != .answered, result != .errorStatus, let index = upstream.endpointIndex {
                cluster.record(index, .gatewayFailure)
            }
            reportLatency(upstream)
            upstream.finish()
        }
        if admitted {
            admitted = false
            cluster.requestEnded()
        }
        body = []
        holdsItself = nil
    }

    // MARK: UpstreamDelegate: the answer is read and discarded

    var downstreamIsWritable: Bool { true }

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        guard !done, let upstream else { return }
        switch part {
        case .head(let head):
            guard head.status.code >= 200 || head.status == .switchingProtocols else { return }
            let grpcStatus = head.headers.first(name: "grpc-status").flatMap { Int($0) }
            let outcome = ExchangeStateMachine.outcomeStatus(head.status, grpcStatus: grpcStatus)
            status = outcome
            if let index = upstream.endpointIndex { cluster.record(index, ExchangeOutcome(status: outcome)) }
            reportLatency(upstream)
        case .body:
            break
        case .end(let trailers):
            if trailers?.first(name: "grpc-status").flatMap({ Int($0) }) == GRPCStatus.unavailable { status = 503 }
            end((status ?? 200) >= 500 ? .errorStatus : .answered)
        }
    }

    func upstreamReadComplete() {}

    func upstreamFailed(_ error: MeshError) {
        end(.failed)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {}
}

import AsyncHTTPClient
import Logging
import MeshworkDataPlane
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Sends the sidecar's finished spans to an OTLP/HTTP endpoint (protobuf) every
/// `tracing.exportInterval`, and once more on shutdown. An export that fails is dropped and
/// counted: tracing never holds on to memory or slows the data path while a collector is away.
public final class TraceExporter: Service {
    private let config: SidecarConfig
    private let spans: SpanCollector
    private let endpoint: String
    private let instance: String?
    private let http: HTTPClient
    private let logger: Logger
    private let exported: Counter
    private let dropped: Counter
    private let failures: Counter

    public init(
        config: SidecarConfig,
        spans: SpanCollector,
        instance: String?,
        group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry,
        logger: Logger
    ) {
        self.config = config
        self.spans = spans
        self.endpoint = config.tracing.endpoint ?? ""
        self.instance = instance
        self.http = HTTPClient(eventLoopGroupProvider: .shared(group))
        self.logger = logger
        exported = registry.makeCounter(name: "meshwork_trace_spans_exported_total")
        dropped = registry.makeCounter(name: "meshwork_trace_spans_dropped_total")
        failures = registry.makeCounter(name: "meshwork_trace_export_failures_total")
    }

    public func run() async throws {
        let interval = Duration.nanoseconds(config.tracing.exportInterval.nanoseconds)
        while !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            await exportOnce()
        }
        // What was recorded before the shutdown goes out too.
        await exportOnce()
        try? await http.shutdown()
    }

    /// Sends whatever is waiting; returns the number of spans sent.
    @discardableResult
    public func exportOnce() async -> Int {
        let (batch, lost) = spans.take()
        if lost > 0 { dropped.increment(by: Int64(lost)) }
        guard !batch.isEmpty else { return 0 }
        var request = HTTPClientRequest(url: endpoint)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/x-protobuf")
        request.body = .bytes(
            ByteBuffer(bytes: OTLPTraceEncoder.encode(batch, service: config.service, instance: instance))
        )
        do {
            let response = try await http.execute(request, timeout: .seconds(5))
            _ = try? await response.body.collect(upTo: 1 << 20)
            guard (200..<300).contains(response.status.code) else {
                failures.increment()
                dropped.increment(by: Int64(batch.count))
                logger.debug("trace export refused", metadata: ["status": "\(response.status.code)"])
                return 0
            }
            exported.increment(by: Int64(batch.count))
            return batch.count
        } catch {
            failures.increment()
            dropped.increment(by: Int64(batch.count))
            logger.debug("trace export failed", metadata: ["error": "\(error)"])
            return 0
        }
    }
}

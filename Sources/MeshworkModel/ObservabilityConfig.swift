/// Distributed tracing: W3C trace context on every request, spans exported over OTLP/HTTP.
public struct TracingConfig: Sendable, Hashable, Encodable {
    /// OTLP/HTTP traces endpoint (`http://127.0.0.1:4318/v1/traces`). Without one the sidecar
    /// records no spans and passes `traceparent`/`tracestate` through untouched.
    public var endpoint: String?
    /// Share of requests arriving without a trace context that start a sampled trace
    /// (0...1). A request that carries one keeps its caller's sampling decision.
    public var sampleRate: Double = 0.01
    /// How often recorded spans are sent to the endpoint.
    public var exportInterval: TimeSpan = .seconds(2)
    /// Spans kept between exports (per sidecar); more are dropped and counted.
    public var maxBufferedSpans: Int = 4096

    public init() {}

    public var isEnabled: Bool { endpoint != nil }
}

/// Where per-request access log lines (JSON, one per line) go.
public enum AccessLogTarget: Sendable, Hashable, Encodable {
    case stdout
    case file(String)

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .stdout: try container.encode("stdout")
        case .file(let path): try container.encode(path)
        }
    }

    /// `stdout`, `-`, or a file path (appended to).
    public init(_ text: String) {
        self = text == "stdout" || text == "-" ? .stdout : .file(text)
    }
}

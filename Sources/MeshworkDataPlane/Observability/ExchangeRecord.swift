import MeshworkModel
import W3CTraceContext

/// One finished exchange as taps and the access log see it: metadata only (the path
/// without its query string; never headers or bodies). Built once per exchange, and only
/// when one of them is on.
struct ExchangeRecord {
    var direction: EdgeDirection
    var source: String
    var target: String
    var method: String
    var path: String
    var status: Int
    var nanoseconds: Int64
    /// The mesh's own error reason when the mesh answered.
    var meshError: String?
    var traceID: TraceID?
    /// This hop's span, when the trace is sampled.
    var spanID: SpanID?
    /// The route rule that decided the exchange (`route/rule`), on the caller's side.
    var route: String? = nil
}

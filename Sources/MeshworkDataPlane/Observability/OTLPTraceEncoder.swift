import W3CTraceContext

/// Encodes spans as an OTLP `ExportTraceServiceRequest` in protobuf, the body of an
/// OTLP/HTTP export (`POST /v1/traces`, `content-type: application/x-protobuf`), following
/// opentelemetry-proto's `collector/trace/v1/trace_service.proto` and `trace/v1/trace.proto`.
/// Written out by hand: a handful of messages, against a generated-code dependency.
public enum OTLPTraceEncoder {
    /// `resource` attributes name the sidecar (`service.name`, `service.instance.id`).
    public static func encode(_ spans: [SpanRecord], service: String, instance: String?) -> [UInt8] {
        var request = ProtobufWriter()
        request.message(1) { resourceSpans in  // ExportTraceServiceRequest.resource_spans
            resourceSpans.message(1) { resource in  // ResourceSpans.resource
                resource.attribute(1, "service.name", service)
                if let instance { resource.attribute(1, "service.instance.id", instance) }
                resource.attribute(1, "telemetry.sdk.name", "meshwork")
            }
            resourceSpans.message(2) { scopeSpans in  // ResourceSpans.scope_spans
                scopeSpans.message(1) { scope in scope.string(1, "meshwork") }  // InstrumentationScope.name
                for span in spans {
                    scopeSpans.message(2) { encodeSpan(span, service: service, into: &$0) }  // ScopeSpans.spans
                }
            }
        }
        return request.buffer
    }

    private static func encodeSpan(_ span: SpanRecord, service: String, into out: inout ProtobufWriter) {
        out.id(1, span.traceID.bytes)  // trace_id
        out.id(2, span.spanID.bytes)  // span_id
        if let parent = span.parentSpanID { out.id(4, parent.bytes) }  // parent_span_id
        // name: the method and the called service (this one for a server span)
        out.string(5, "\(span.method) \(span.kind == .server ? service : span.peer)")
        out.varint(6, span.kind == .server ? 2 : 3)  // kind: SPAN_KIND_SERVER / SPAN_KIND_CLIENT
        out.fixed64(7, span.startUnixNanos)  // start_time_unix_nano
        out.fixed64(8, max(span.startUnixNanos, span.endUnixNanos))  // end_time_unix_nano
        out.attribute(9, "http.request.method", span.method)
        out.attribute(9, "url.path", span.path)
        out.attribute(9, "http.response.status_code", Int64(span.status))
        out.attribute(9, span.kind == .server ? "meshwork.source" : "meshwork.target", span.peer)
        if let reason = span.meshError { out.attribute(9, "meshwork.error", reason) }
        if let route = span.route { out.attribute(9, "meshwork.route", route) }
        // OpenTelemetry HTTP conventions: 5xx is an error on both sides, 4xx only for clients.
        let failed = span.status >= 500 || (span.kind == .client && span.status >= 400) || span.meshError != nil
        if failed {
            out.message(15) { status in  // status
                if let reason = span.meshError { status.string(2, reason) }  // message
                status.varint(3, 2)  // code: STATUS_CODE_ERROR
            }
        }
    }
}

/// The few protobuf encodings OTLP needs (varint, fixed64, length-delimited).
struct ProtobufWriter {
    private(set) var buffer: [UInt8] = []

    private mutating func raw(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            buffer.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        buffer.append(UInt8(value))
    }

    private mutating func tag(_ field: Int, _ wireType: UInt64) {
        raw(UInt64(field) << 3 | wireType)
    }

    mutating func varint(_ field: Int, _ value: UInt64) {
        tag(field, 0)
        raw(value)
    }

    mutating func fixed64(_ field: Int, _ value: UInt64) {
        tag(field, 1)
        for shift in stride(from: 0, to: 64, by: 8) { buffer.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    mutating func bytes(_ field: Int, _ value: some Collection<UInt8>) {
        tag(field, 2)
        raw(UInt64(value.count))
        buffer.append(contentsOf: value)
    }

    /// A fixed-size ID (a tuple of bytes, as `TraceID` and `SpanID` hold theirs).
    mutating func id<T>(_ field: Int, _ tuple: T) {
        withUnsafeBytes(of: tuple) { bytes(field, Array($0)) }
    }

    mutating func string(_ field: Int, _ value: String) {
        bytes(field, Array(value.utf8))
    }

    mutating func message(_ field: Int, _ build: (inout ProtobufWriter) -> Void) {
        var inner = ProtobufWriter()
        build(&inner)
        bytes(field, inner.buffer)
    }

    /// A `KeyValue` with a string `AnyValue`.
    mutating func attribute(_ field: Int, _ key: String, _ value: String) {
        message(field) { keyValue in
            keyValue.string(1, key)
            keyValue.message(2) { $0.string(1, value) }  // AnyValue.string_value
        }
    }

    /// A `KeyValue` with an int `AnyValue`.
    mutating func attribute(_ field: Int, _ key: String, _ value: Int64) {
        message(field) { keyValue in
            keyValue.string(1, key)
            keyValue.message(2) { $0.varint(3, UInt64(bitPattern: value)) }  // AnyValue.int_value
        }
    }
}

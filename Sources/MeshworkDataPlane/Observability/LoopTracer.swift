import MeshworkModel
import NIOHTTP1
import W3CTraceContext

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The trace context of one exchange: the span this hop adds (when the trace is sampled),
/// and what goes upstream in `traceparent`.
struct ExchangeTrace {
    var traceID: TraceID
    /// This hop's span; the upstream sees it as its parent.
    var spanID: SpanID
    var parentSpanID: SpanID?
    var sampled: Bool
    /// The `traceparent` value sent upstream; nil leaves the caller's header as it came.
    var header: String?
    /// The caller's `traceparent` could not be parsed: its `tracestate` must not be
    /// forwarded either (W3C trace context, section 3.3.1).
    var dropsState: Bool
    /// The request carries a `traceparent` that `header` replaces (otherwise it is added).
    var replaces: Bool { dropsState || parentSpanID != nil }
    var startUnixNanos: UInt64
}

/// One event loop's tracing: sampling decisions, span IDs (from a generator seeded once,
/// not a system call per request) and the shard finished spans go to.
final class LoopTracer {
    static let parentHeader = "traceparent"
    static let stateHeader = "tracestate"

    private var random: SplitMix64
    let sampleRate: Double
    let shard: SpanCollector.Shard

    init(sampleRate: Double, shard: SpanCollector.Shard, seed: UInt64) {
        self.sampleRate = sampleRate
        self.shard = shard
        self.random = SplitMix64(seed: seed)
    }

    /// W3C trace context for a request with `headers`: a sampled caller's trace gets a
    /// span of this hop; an unsampled caller's context passes through untouched; a request
    /// without a (valid) one starts a trace, sampled at `sampleRate`.
    func begin(_ headers: HTTPHeaders) -> ExchangeTrace {
        var dropsState = false
        if let value = headers.first(name: Self.parentHeader) {
            if let incoming = Self.parse(value) {
                guard incoming.sampled else {
                    return ExchangeTrace(
                        traceID: incoming.traceID,
                        spanID: incoming.spanID,
                        parentSpanID: nil,
                        sampled: false,
                        header: nil,
                        dropsState: false,
                        startUnixNanos: 0
                    )
                }
                let span = SpanID.random(using: &random)
                return ExchangeTrace(
                    traceID: incoming.traceID,
                    spanID: span,
                    parentSpanID: incoming.spanID,
                    sampled: true,
                    header: Self.format(incoming.traceID, span, sampled: true),
                    dropsState: false,
                    startUnixNanos: Self.unixNanos()
                )
            }
            dropsState = true
        }
        let sampled = sampleRate >= 1 || (sampleRate > 0 && Double(random.next() >> 11) * 0x1p-53 < sampleRate)
        let trace = TraceID.random(using: &random)
        let span = SpanID.random(using: &random)
        return ExchangeTrace(
            traceID: trace,
            spanID: span,
            parentSpanID: nil,
            sampled: sampled,
            header: Self.format(trace, span, sampled: sampled),
            dropsState: dropsState,
            startUnixNanos: sampled ? Self.unixNanos() : 0
        )
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// `00-<trace>-<span>-<flags>` written straight into one string (the library's
    /// `description`s build an array and a string per ID).
    static func format(_ trace: TraceID, _ span: SpanID, sampled: Bool) -> String {
        String(unsafeUninitializedCapacity: 55) { out in
            func put(_ bytes: UnsafeRawBufferPointer, at start: Int) {
                for (i, byte) in bytes.enumerated() {
                    out[start + 2 * i] = hex[Int(byte >> 4)]
                    out[start + 2 * i + 1] = hex[Int(byte & 0x0F)]
                }
            }
            out[0] = UInt8(ascii: "0")
            out[1] = UInt8(ascii: "0")
            out[2] = UInt8(ascii: "-")
            withUnsafeBytes(of: trace.bytes) { put($0, at: 3) }
            out[35] = UInt8(ascii: "-")
            withUnsafeBytes(of: span.bytes) { put($0, at: 36) }
            out[52] = UInt8(ascii: "-")
            out[53] = UInt8(ascii: "0")
            out[54] = sampled ? UInt8(ascii: "1") : UInt8(ascii: "0")
            return 55
        }
    }

    /// A version-00 `traceparent` (W3C trace context section 3.2), read in place: nil when
    /// it is malformed, or its trace or parent ID is all zeros.
    static func parse(_ value: String) -> (traceID: TraceID, spanID: SpanID, sampled: Bool)? {
        var value = value
        return value.withUTF8 { text -> (TraceID, SpanID, Bool)? in
            guard text.count == 55, text[0] == UInt8(ascii: "0"), text[1] == UInt8(ascii: "0"),
                text[2] == UInt8(ascii: "-"), text[35] == UInt8(ascii: "-"), text[52] == UInt8(ascii: "-")
            else { return nil }
            func nibble(_ c: UInt8) -> UInt8? {
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
                default: return nil  // the spec allows lowercase hex only
                }
            }
            func read(_ start: Int, into bytes: UnsafeMutableRawBufferPointer) -> Bool {
                var any: UInt8 = 0
                for i in 0..<bytes.count {
                    guard let high = nibble(text[start + 2 * i]), let low = nibble(text[start + 2 * i + 1]) else {
                        return false
                    }
                    bytes[i] = high << 4 | low
                    any |= bytes[i]
                }
                return any != 0
            }
            var trace = TraceID.null.bytes
            var span = SpanID.null.bytes
            guard withUnsafeMutableBytes(of: &trace, { read(3, into: $0) }),
                withUnsafeMutableBytes(of: &span, { read(36, into: $0) }),
                let high = nibble(text[53]), let low = nibble(text[54])
            else { return nil }
            return (TraceID(bytes: trace), SpanID(bytes: span), (high << 4 | low) & 1 == 1)
        }
    }

    /// Wall-clock time for span timestamps (read only for sampled exchanges).
    static func unixNanos() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// 2014): a fast, well-distributed 64-bit generator for IDs that need to be unique, not secret.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

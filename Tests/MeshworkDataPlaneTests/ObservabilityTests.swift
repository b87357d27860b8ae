import Foundation
import MeshworkModel
import NIOHTTP1
import Synchronization
import Testing
import W3CTraceContext

@testable import MeshworkDataPlane

/// Trace context decisions and access log formatting, without sockets.
@Suite struct ObservabilityTests {
    private func tracer(rate: Double) -> LoopTracer {
        LoopTracer(sampleRate: rate, shard: SpanCollector(loops: 1, capacity: 8).shards[0], seed: 42)
    }

    private func headers(_ pairs: [(String, String)]) -> HTTPHeaders { HTTPHeaders(pairs) }

    @Test func sampledCallerGetsAChildSpanInItsTrace() {
        let trace = tracer(rate: 0).begin(
            headers([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
        )
        #expect(trace.sampled)
        #expect("\(trace.traceID)" == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(trace.parentSpanID.map { "\($0)" } == "00f067aa0ba902b7")
        #expect("\(trace.spanID)" != "00f067aa0ba902b7")
        #expect(trace.header == "00-4bf92f3577b34da6a3ce929d0e0e4736-\(trace.spanID)-01")
        #expect(trace.startUnixNanos > 0 && !trace.dropsState)
    }

    @Test func traceparentFormatsAndParsesInPlace() throws {
        let trace = TraceID.random()
        let span = SpanID.random()
        let text = LoopTracer.format(trace, span, sampled: true)
        #expect(text == "00-\(trace)-\(span)-01")
        let parsed = try #require(LoopTracer.parse(text))
        #expect(parsed.traceID == trace && parsed.spanID == span && parsed.sampled)
        #expect(LoopTracer.parse(LoopTracer.format(trace, span, sampled: false))?.sampled == false)
        // Uppercase hex, a zero span ID, a wrong delimiter: all invalid (W3C 3.2.2).
        #expect(LoopTracer.parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01") == nil)
        #expect(LoopTracer.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01") == nil)
        #expect(LoopTracer.parse("00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01") == nil)
    }

    @Test func unsampledCallerPassesThroughUntouched() {
        let trace = tracer(rate: 1).begin(
            headers([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")])
        )
        #expect(!trace.sampled && trace.header == nil)
    }

    @Test func missingOrInvalidContextStartsATraceAtTheSampleRate() {
        let always = tracer(rate: 1).begin(headers([]))
        #expect(always.sampled && always.parentSpanID == nil)
        #expect(always.header?.hasSuffix("-01") == true && always.header?.count == 55)
        let never = tracer(rate: 0).begin(headers([]))
        #expect(!never.sampled && never.header?.hasSuffix("-00") == true)
        // All-zero trace ID, bad length, unknown version: invalid, so a new trace, and the
        // caller's tracestate must not go on.
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let trace = tracer(rate: 1).begin(headers([("traceparent", bad)]))
            #expect(trace.dropsState && trace.parentSpanID == nil && trace.header != bad)
        }
        // About a quarter sampled at 0.25 (seeded generator: deterministic).
        let quarter = tracer(rate: 0.25)
        let sampled = (0..<4000).filter { _ in quarter.begin(headers([])).sampled }.count
        #expect(sampled > 850 && sampled < 1150, "\(sampled)")
    }

    @Test func spanShardsAreBoundedAndCountDrops() {
        let collector = SpanCollector(loops: 2, capacity: 4)
        let span = SpanRecord(
            traceID: .random(),
            spanID: .random(),
            parentSpanID: nil,
            kind: .client,
            method: "GET",
            path: "/",
            peer: "orders",
            status: 200,
            meshError: nil,
            startUnixNanos: 1,
            endUnixNanos: 2
        )
        for _ in 0..<5 { collector.shards[0].record(span) }
        collector.shards[1].record(span)
        let taken = collector.take()
        #expect(taken.spans.count == 3 && taken.dropped == 3)
        #expect(collector.take().spans.isEmpty)
    }

    /// A client span a route rule decided names the rule (`meshwork.route`); others do not.
    @Test func aRoutedClientSpanNamesItsRule() {
        var span = SpanRecord(
            traceID: .random(),
            spanID: .random(),
            parentSpanID: nil,
            kind: .client,
            method: "GET",
            path: "/",
            peer: "orders",
            status: 200,
            meshError: nil,
            startUnixNanos: 1,
            endUnixNanos: 2
        )
        let plain = String(decoding: OTLPTraceEncoder.encode([span], service: "web", instance: nil), as: UTF8.self)
        span.route = "orders-split/canary"
        let routed = String(decoding: OTLPTraceEncoder.encode([span], service: "web", instance: nil), as: UTF8.self)
        #expect(!plain.contains("meshwork.route"))
        #expect(routed.contains("meshwork.route") && routed.contains("orders-split/canary"))
    }

    @Test func timestampsAndEscapingFollowRFC3339AndJSON() {
        var out: [UInt8] = []
        AccessLogWriter.appendTimestamp(0, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "1970-01-01T00:00:00.000Z")
        out = []
        AccessLogWriter.appendTimestamp(1_764_547_200_123_456_789, to: &out)  // 2025-12-01
        #expect(String(decoding: out, as: UTF8.self) == "2025-12-01T00:00:00.123Z")
        out = []
        AccessLogWriter.appendTimestamp(951_827_696_007_000_000, to: &out)  // leap day
        #expect(String(decoding: out, as: UTF8.self) == "2000-02-29T12:34:56.007Z")
        for (value, width, text) in [(0, 1, "0"), (7, 3, "007"), (1234, 3, "1234"), (Int64.max, 1, "\(Int64.max)")] {
            out = []
            AccessLogWriter.appendDecimal(Int64(value), to: &out, width: width)
            #expect(String(decoding: out, as: UTF8.self) == text)
        }
        out = []
        AccessLogWriter.appendEscaped("a\"b\\c\n\u{1}", to: &out)
        #expect(String(decoding: out, as: UTF8.self) == #"a\"b\\c\u000a\u0001"#)
    }

    /// A log whose reader stops reading: the writes wait on their own queue (enqueueing
    /// never blocks the caller), at most 8 MiB of them, and the rest is dropped and counted.
    @Test func aStalledLogReaderNeverBlocksTheWriterAndDropsPastTheBound() throws {
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("mw-fifo-\(UUID().uuidString)").path
        #expect(mkfifo(fifo, 0o600) == 0)
        defer { unlink(fifo) }
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }
        let file = try AccessLogFile(.file(fifo))
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 64 * 1024)
        let started = ContinuousClock.now
        for _ in 0..<(12 * 16) { file.enqueue(chunk) }  // 12 MiB into a pipe nobody reads
        #expect(ContinuousClock.now - started < .seconds(5), "enqueue blocked")
        let dropped = file.droppedBytes.load(ordering: .relaxed)
        #expect(dropped >= 3 << 20 && dropped % chunk.count == 0, "dropped \(dropped)")
        // The reader catches up: everything not dropped arrives, whole.
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let expected = 12 << 20 - dropped
        let deadline = ContinuousClock.now + .seconds(20)
        while received < expected, ContinuousClock.now < deadline {
            let n = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
            if n > 0 { received += n } else { usleep(1000) }
        }
        #expect(received == expected)
    }
}

/// Latency histograms sharded per event loop merge exactly, in the Prometheus layout.
@Suite struct LoopShardedHistogramTests {
    @Test func shardsMergeIntoCumulativeBuckets() {
        let histograms = LatencyHistograms(loops: 2)
        let a = histograms.make(family: "meshwork_test_duration_seconds", help: "t", labels: [("listener", "a")])
        a.record(nanoseconds: 300_000, loop: 0)  // <= 0.5 ms
        a.record(nanoseconds: 700_000, loop: 1)  // <= 1 ms
        a.record(nanoseconds: 40_000_000_000, loop: 1)  // beyond 30 s
        let counts = a.merged()
        #expect(counts.count == 3 && counts.buckets[0] == 1 && counts.buckets[1] == 1 && counts.buckets.last == 1)
        let text = String(decoding: histograms.prometheusText(), as: UTF8.self)
        #expect(text.contains(#"meshwork_test_duration_seconds_bucket{listener="a",le="0.0005"} 1"#))
        #expect(text.contains(#"meshwork_test_duration_seconds_bucket{listener="a",le="0.001"} 2"#))
        #expect(text.contains(#"meshwork_test_duration_seconds_bucket{listener="a",le="30"} 2"#))
        #expect(text.contains(#"meshwork_test_duration_seconds_bucket{listener="a",le="+Inf"} 3"#))
        #expect(text.contains(#"meshwork_test_duration_seconds_count{listener="a"} 3"#))
        #expect(text.components(separatedBy: "# TYPE meshwork_test_duration_seconds histogram").count == 2)
    }
}

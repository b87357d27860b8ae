import NIOConcurrencyHelpers
import W3CTraceContext

/// One finished hop of a trace as the sidecar saw it: a server span for a call it received
/// for its app, a client span for a call it made to another service.
public struct SpanRecord: Sendable {
    public enum Kind: Sendable {
        case server
        case client
    }

    public var traceID: TraceID
    public var spanID: SpanID
    public var parentSpanID: SpanID?
    public var kind: Kind
    public var method: String
    /// The request target's path (no query string: it may carry secrets).
    public var path: String
    /// The service on the other end: the caller of a server span, the callee of a client span.
    public var peer: String
    public var status: Int
    /// The mesh's own error reason when the mesh answered (`x-meshwork-error`).
    public var meshError: String?
    /// The route rule that decided a client span (`route/rule`).
    public var route: String? = nil
    public var startUnixNanos: UInt64
    public var endUnixNanos: UInt64
}

/// The spans every event loop records between two exports. Each loop appends to its own
/// shard (a lock only that loop and the exporter take), so loops never contend; a shard
/// holds a bounded number of spans and counts what it had to drop.
public final class SpanCollector: Sendable {
    final class Shard: Sendable {
        private struct State {
            var spans: [SpanRecord] = []
            var dropped: UInt64 = 0
        }

        private let state = NIOLockedValueBox(State())
        let capacity: Int

        init(capacity: Int) {
            self.capacity = capacity
        }

        func record(_ span: SpanRecord) {
            state.withLockedValue { state in
                if state.spans.count < capacity {
                    state.spans.append(span)
                } else {
                    state.dropped += 1
                }
            }
        }

        func take() -> (spans: [SpanRecord], dropped: UInt64) {
            state.withLockedValue { state in
                defer {
                    state.spans.removeAll(keepingCapacity: false)
                    state.dropped = 0
                }
                return (state.spans, state.dropped)
            }
        }
    }

    let shards: [Shard]

    init(loops: Int, capacity: Int) {
        let perLoop = max(1, (capacity + max(1, loops) - 1) / max(1, loops))
        shards = (0..<max(1, loops)).map { _ in Shard(capacity: perLoop) }
    }

    /// Every span recorded since the last call, and how many were dropped for lack of room.
    public func take() -> (spans: [SpanRecord], dropped: UInt64) {
        var spans: [SpanRecord] = []
        var dropped: UInt64 = 0
        for shard in shards {
            let taken = shard.take()
            spans += taken.spans
            dropped += taken.dropped
        }
        return (spans, dropped)
    }
}

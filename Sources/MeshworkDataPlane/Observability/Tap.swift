import MeshworkModel
import MeshworkTraffic
import NIOConcurrencyHelpers
import NIOCore

/// One tap's queue of events: loops push (after their own sampling and rate limit), the
/// admin connection drains. Bounded: a reader that falls behind loses events, counted.
public final class TapSubscriber: Sendable {
    public let filter: TapFilter
    static let capacity = 1024
    private let queue = NIOLockedValueBox<(events: [TapEvent], dropped: Int)>(([], 0))

    init(filter: TapFilter) {
        self.filter = filter
    }

    func push(_ event: TapEvent) {
        queue.withLockedValue { queue in
            if queue.events.count < Self.capacity {
                queue.events.append(event)
            } else {
                queue.dropped += 1
            }
        }
    }

    public func drain() -> (events: [TapEvent], dropped: Int) {
        queue.withLockedValue { queue in
            defer { queue = ([], 0) }
            return queue
        }
    }
}

/// One event loop's taps: each with this loop's share of its rate limit and its own
/// sampling generator, so offering an exchange touches nothing another loop touches until
/// an event passes both (then one short lock to queue it).
final class LoopTaps {
    private struct Entry {
        let subscriber: TapSubscriber
        var bucket: TokenBucket
    }

    private var entries: [Entry]
    private var random: SplitMix64

    init(_ subscribers: [TapSubscriber], loops: Int, now: UInt64, seed: UInt64) {
        entries = subscribers.map {
            Entry(
                subscriber: $0,
                bucket: TokenBucket(
                    rate: $0.filter.maxPerSecond / Double(loops),
                    burst: max(1, $0.filter.maxPerSecond / Double(loops)),
                    now: now
                )
            )
        }
        random = SplitMix64(seed: seed)
    }

    func offer(_ record: ExchangeRecord, now: UInt64) {
        var event: TapEvent?
        let peer = record.direction == .inbound ? record.source : record.target
        for index in entries.indices {
            let filter = entries[index].subscriber.filter
            guard
                filter.matches(
                    direction: record.direction,
                    peer: peer,
                    method: record.method,
                    path: record.path,
                    status: record.status
                )
            else { continue }
            if filter.sampleRate < 1, Double(random.next() >> 11) * 0x1p-53 >= filter.sampleRate { continue }
            guard entries[index].bucket.tryTake(now: now) else { continue }
            if event == nil {
                // Built once, for the first tap that takes it, and only then.
                var time: [UInt8] = []
                AccessLogWriter.appendTimestamp(LoopTracer.unixNanos(), to: &time)
                event = TapEvent(
                    time: String(decoding: time, as: UTF8.self),
                    direction: record.direction.rawValue,
                    source: record.source,
                    target: record.target,
                    method: record.method,
                    path: record.path,
                    status: record.status,
                    latencyMs: Double(max(0, record.nanoseconds) / 1000) / 1000,
                    meshError: record.meshError,
                    traceId: record.traceID.map { "\($0)" },
                    route: record.route
                )
            }
            entries[index].subscriber.push(event!)
        }
    }
}

/// The sidecar's taps: who is watching, installed on every loop when that changes (the data
/// path reads a loop-local reference: nothing per request when nobody taps).
public final class TapHub: Sendable {
    private let contexts: LoopContexts
    private let subscribers = NIOLockedValueBox<[TapSubscriber]>([])

    init(contexts: LoopContexts) {
        self.contexts = contexts
    }

    public var count: Int { subscribers.withLockedValue { $0.count } }

    public func subscribe(_ filter: TapFilter) -> TapSubscriber {
        let subscriber = TapSubscriber(filter: filter)
        // Installed under the lock: loops see the changes in the order they were made.
        subscribers.withLockedValue { subscribers in
            subscribers.append(subscriber)
            install(subscribers)
        }
        return subscriber
    }

    public func unsubscribe(_ subscriber: TapSubscriber) {
        subscribers.withLockedValue { subscribers in
            subscribers.removeAll { $0 === subscriber }
            install(subscribers)
        }
    }

    private func install(_ all: [TapSubscriber]) {
        let contexts = self.contexts
        var seeds = SystemRandomNumberGenerator()
        for index in contexts.all.indices {
            let seed = seeds.next()
            let loop = contexts.all[index].loop
            loop.execute {
                let context = contexts.all[index]
                context.taps =
                    all.isEmpty
                    ? nil : LoopTaps(all, loops: contexts.all.count, now: loop.now.uptimeNanoseconds, seed: seed)
            }
        }
    }
}

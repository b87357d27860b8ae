/// A count over the last `window` of time, kept in `buckets` equal slots so that old
/// events fall out gradually: memory is fixed however many events arrive.
public struct SlidingWindowCounter: Sendable {
    private let bucketNanos: UInt64
    private var counts: [Double]
    private var stamps: [UInt64]

    public init(window: Duration, buckets: Int = 10) {
        let buckets = max(1, buckets)
        self.bucketNanos = max(1, UInt64(max(1, window.nanoseconds)) / UInt64(buckets))
        self.counts = Array(repeating: 0, count: buckets)
        self.stamps = Array(repeating: .max, count: buckets)
    }

    public mutating func add(_ amount: Double = 1, now: UInt64) {
        let epoch = now / bucketNanos
        let slot = Int(epoch % UInt64(counts.count))
        if stamps[slot] != epoch {
            stamps[slot] = epoch
            counts[slot] = 0
        }
        counts[slot] += amount
    }

    /// The sum over the window ending at `now`.
    public func total(now: UInt64) -> Double {
        let epoch = now / bucketNanos
        let oldest = epoch >= UInt64(counts.count) ? epoch - UInt64(counts.count) + 1 : 0
        var sum = 0.0
        for slot in counts.indices where stamps[slot] != .max && stamps[slot] >= oldest && stamps[slot] <= epoch {
            sum += counts[slot]
        }
        return sum
    }
}

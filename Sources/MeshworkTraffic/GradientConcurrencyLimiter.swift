/// Settings of the adaptive concurrency limit (Envoy's gradient controller defaults).
public struct GradientLimiterPolicy: Sendable, Hashable {
    /// Latency samples are summarised (by `percentile`) once per window.
    public var sampleWindow: Duration = .milliseconds(100)
    public var percentile: Double = 0.5
    /// The ideal latency (minRTT) is re-measured this often, with concurrency pinned to
    /// `minConcurrency` until `minRTTRequests` samples are in.
    public var minRTTInterval: Duration = .seconds(60)
    public var minRTTRequests: Int = 50
    public var minConcurrency: Int = 3
    public var maxConcurrency: Int = 1000
    /// Latency above minRTT that still counts as unqueued: `B = buffer x minRTT`.
    public var buffer: Double = 0.25

    public init() {}
}

/// An adaptive concurrency limit in front of an app (Envoy's gradient controller, after
/// Netflix's concurrency-limits): the limit follows
///
///     gradient = clamp((minRTT + B) / sampleRTT, 0.5, 2)
///     limit'   = gradient × limit + sqrt(gradient × limit)
///
/// every sample window, so it grows while latency stays near the ideal and shrinks as soon
/// as requests start to queue. Requests over the limit are refused at once: the app keeps
/// its latency and the excess is shed before it reaches it.
public struct GradientConcurrencyLimiter: Sendable {
    public let policy: GradientLimiterPolicy
    public private(set) var limit: Int
    public private(set) var inFlight = 0
    /// The ideal latency in nanoseconds (nil until first measured).
    public private(set) var minRTT: Double?
    public private(set) var isMeasuringMinRTT = true

    private var limitBeforeMeasuring: Int
    private var samples: [Double] = []
    private var sampleCount = 0
    private var windowEnd: UInt64
    private var nextMinRTT: UInt64 = 0
    private var windowsAtMinimum = 0

    static let maxSamples = 512

    public init(policy: GradientLimiterPolicy = GradientLimiterPolicy(), now: UInt64) {
        self.policy = policy
        self.limit = max(1, policy.minConcurrency)
        self.limitBeforeMeasuring = self.limit
        self.windowEnd = now &+ UInt64(policy.sampleWindow.nanoseconds)
        samples.reserveCapacity(Self.maxSamples)
    }

    /// Admits a request when fewer than `limit` are in flight.
    public mutating func tryAcquire(now: UInt64) -> Bool {
        advance(now: now)
        guard inFlight < limit else { return false }
        inFlight += 1
        return true
    }

    /// An admitted request finished after `rtt` (nil when it failed without a latency
    /// worth learning from).
    public mutating func release(rtt: Duration?, now: UInt64) {
        inFlight = max(0, inFlight - 1)
        if let rtt {
            let nanos = Double(max(0, rtt.nanoseconds))
            if samples.count < Self.maxSamples {
                samples.append(nanos)
            } else {
                samples[sampleCount % Self.maxSamples] = nanos
            }
            sampleCount += 1
        }
        advance(now: now)
    }

    private mutating func advance(now: UInt64) {
        if isMeasuringMinRTT {
            guard sampleCount >= policy.minRTTRequests else { return }
            minRTT = percentile(of: samples, policy.percentile)
            isMeasuringMinRTT = false
            limit = max(limitBeforeMeasuring, policy.minConcurrency)
            nextMinRTT = now &+ UInt64(policy.minRTTInterval.nanoseconds)
            resetWindow(now: now)
            return
        }
        if now >= nextMinRTT {
            startMeasuring(now: now)
            return
        }
        guard now >= windowEnd else { return }
        if let minRTT, !samples.isEmpty {
            let sampleRTT = max(percentile(of: samples, policy.percentile), 1)
            let gradient = min(2, max(0.5, (minRTT + policy.buffer * minRTT) / sampleRTT))
            let scaled = gradient * Double(limit)
            let next = Int((scaled + scaled.squareRoot()).rounded(.down))
            limit = min(policy.maxConcurrency, max(policy.minConcurrency, next))
            windowsAtMinimum = limit == policy.minConcurrency ? windowsAtMinimum + 1 : 0
        }
        resetWindow(now: now)
        // Stuck at the floor for five windows: the ideal latency has probably moved.
        if windowsAtMinimum >= 5 { startMeasuring(now: now) }
    }

    private mutating func startMeasuring(now: UInt64) {
        isMeasuringMinRTT = true
        limitBeforeMeasuring = limit
        limit = max(1, policy.minConcurrency)
        windowsAtMinimum = 0
        samples.removeAll(keepingCapacity: true)
        sampleCount = 0
    }

    private mutating func resetWindow(now: UInt64) {
        samples.removeAll(keepingCapacity: true)
        sampleCount = 0
        windowEnd = now &+ UInt64(policy.sampleWindow.nanoseconds)
    }

    private func percentile(of values: [Double], _ p: Double) -> Double {
        let sorted = values.sorted()
        let rank = Int((Double(sorted.count - 1) * min(1, max(0, p))).rounded())
        return sorted[rank]
    }
}

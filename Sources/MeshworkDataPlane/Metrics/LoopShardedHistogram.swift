import NIOConcurrencyHelpers

/// A latency histogram (the buckets of `latencyBuckets`) with one shard per event loop: a
/// request takes only its own loop's lock (which the scraper takes once per scrape), so
/// loops never contend on a shared histogram the way they would on one Prometheus
/// `Histogram` (a single lock every request takes).
final class LoopShardedHistogram: Sendable {
    struct Counts {
        /// Per bucket, not cumulative; the last is beyond the largest bound.
        var buckets: [UInt64]
        var count: UInt64 = 0
        var sumNanos: Int64 = 0
    }

    static let bounds: [Int64] = latencyBuckets.map {
        Int64($0.components.seconds) * 1_000_000_000 + Int64($0.components.attoseconds / 1_000_000_000)
    }

    let family: String
    let labels: String
    private let shards: [NIOLockedValueBox<Counts>]

    init(family: String, labels: [(String, String)], loops: Int) {
        self.family = family
        self.labels = labels.map { "\($0.0)=\"\($0.1)\"" }.joined(separator: ",")
        shards = (0..<max(1, loops)).map { _ in
            NIOLockedValueBox(Counts(buckets: Array(repeating: 0, count: Self.bounds.count + 1)))
        }
    }

    func record(nanoseconds: Int64, loop: Int) {
        let value = max(0, nanoseconds)
        var index = 0
        while index < Self.bounds.count, value > Self.bounds[index] { index += 1 }
        shards[loop % shards.count].withLockedValue { counts in
            counts.buckets[index] += 1
            counts.count += 1
            counts.sumNanos &+= value
        }
    }

    func merged() -> Counts {
        var total = Counts(buckets: Array(repeating: 0, count: Self.bounds.count + 1))
        for shard in shards {
            let counts = shard.withLockedValue { $0 }
            for index in total.buckets.indices { total.buckets[index] += counts.buckets[index] }
            total.count += counts.count
            total.sumNanos &+= counts.sumNanos
        }
        return total
    }
}

/// Every sharded histogram of a sidecar, for the admin `/metrics` exposition (grouped by
/// family, as the text format wants).
final class LatencyHistograms: Sendable {
    private struct Family {
        var help: String
        var members: [LoopShardedHistogram] = []
    }

    let loops: Int
    private let families = NIOLockedValueBox<[(name: String, family: Family)]>([])

    init(loops: Int) {
        self.loops = max(1, loops)
    }

    /// A histogram for `family` (e.g. `meshwork_listener_request_duration_seconds`) with
    /// `labels`, exposed until the sidecar stops.
    func make(family name: String, help: String, labels: [(String, String)]) -> LoopShardedHistogram {
        let histogram = LoopShardedHistogram(family: name, labels: labels, loops: loops)
        return families.withLockedValue { families in
            guard let index = families.firstIndex(where: { $0.name == name }) else {
                families.append((name, Family(help: help, members: [histogram])))
                return histogram
            }
            // The same series again (a cluster recreated by a reload): one histogram, as a
            // Prometheus registry would give.
            if let existing = families[index].family.members.first(where: { $0.labels == histogram.labels }) {
                return existing
            }
            families[index].family.members.append(histogram)
            return histogram
        }
    }

    func prometheusText() -> [UInt8] {
        let snapshot = families.withLockedValue { $0 }
        var text = ""
        for (name, family) in snapshot {
            text += "# HELP \(name) \(family.help)\n# TYPE \(name) histogram\n"
            for histogram in family.members {
                let counts = histogram.merged()
                let labels = histogram.labels
                var cumulative: UInt64 = 0
                for (index, bound) in LoopShardedHistogram.bounds.enumerated() {
                    cumulative += counts.buckets[index]
                    text += "\(name)_bucket{\(labels),le=\"\(Self.seconds(bound))\"} \(cumulative)\n"
                }
                text += "\(name)_bucket{\(labels),le=\"+Inf\"} \(counts.count)\n"
                text += "\(name)_sum{\(labels)} \(Double(counts.sumNanos) / 1e9)\n"
                text += "\(name)_count{\(labels)} \(counts.count)\n"
            }
        }
        return Array(text.utf8)
    }

    private static func seconds(_ nanos: Int64) -> String {
        let value = Double(nanos) / 1e9
        return value == value.rounded() ? String(Int(value)) : String(value)
    }
}

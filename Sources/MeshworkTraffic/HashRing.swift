/// Consistent hashing on a ring (Karger et al. 1997; Ketama's layout, Envoy's `ring_hash`):
/// each endpoint owns points on a 64-bit ring in proportion to its weight, and a request
/// goes to the owner of the first point at or after its hash. When an endpoint leaves, only
/// the keys it owned move; the rest stay where they were.
public struct HashRing: Sendable {
    private var points: [UInt64] = []
    private var owners: [Int32] = []

    /// - Parameters:
    ///   - members: the endpoints on the ring: their index, stable key and weight.
    ///   - minimumSize: points on the ring at least (more points, more even shares).
    ///   - maximumSize: points at most, whatever the weights ask.
    public init(
        members: [(index: Int, key: String, weight: Double)],
        minimumSize: Int = 1024,
        maximumSize: Int = 1 << 20
    ) {
        let total = members.reduce(0) { $0 + max($1.weight, 0) }
        guard total > 0 else { return }
        let size = Double(min(maximumSize, max(minimumSize, members.count * 160)))
        var entries: [(UInt64, Int32)] = []
        entries.reserveCapacity(Int(size) + members.count)
        for member in members where member.weight > 0 {
            let count = max(1, Int((member.weight / total * size).rounded()))
            for replica in 0..<count {
                entries.append((StableHash.hash("\(member.key)_\(replica)"), Int32(member.index)))
            }
        }
        entries.sort { $0.0 < $1.0 }
        points = entries.map(\.0)
        owners = entries.map(\.1)
    }

    public var isEmpty: Bool { points.isEmpty }
    public var count: Int { points.count }

    /// The endpoint owning `hash`: the first point clockwise from it.
    public func lookup(_ hash: UInt64) -> Int? {
        guard !points.isEmpty else { return nil }
        var low = 0
        var high = points.count
        while low < high {
            let mid = (low + high) / 2
            if points[mid] < hash { low = mid + 1 } else { high = mid }
        }
        return Int(owners[low == points.count ? 0 : low])
    }
}

/// Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
/// Balancer", NSDI 2016, section 3.4), with Envoy's weighting: every endpoint walks its own
/// permutation of a prime-sized table, `(offset + j·skip) mod M`, claiming the next free
/// slot in turn, and an endpoint of half the largest weight takes a turn every other round.
/// Lookups are one array index; shares are even to within a fraction of a percent, and
/// when an endpoint leaves few other keys move.
public struct MaglevTable: Sendable {
    public static let defaultSize = 65537
    private var table: [UInt32] = []

    /// - Parameter size: the table size; must be prime (65537 by default).
    public init(members: [(index: Int, key: String, weight: Double)], size: Int = MaglevTable.defaultSize) {
        let members = members.filter { $0.weight > 0 }
        guard !members.isEmpty, size > 1 else { return }
        let maxWeight = members.map(\.weight).max() ?? 1
        let m = UInt64(size)
        struct Build {
            var offset: UInt64
            var skip: UInt64
            var weight: Double
            var target: Double = 0
            var next: UInt64 = 0
        }
        var builds = members.map { member in
            Build(
                offset: StableHash.hash("\(member.key)#offset") % m,
                skip: StableHash.hash("\(member.key)#skip") % (m - 1) + 1,
                weight: member.weight / maxWeight
            )
        }
        var slots = [UInt32](repeating: .max, count: size)
        var filled = 0
        var iteration = 1.0
        while filled < size {
            for i in builds.indices where filled < size {
                // An endpoint of weight w/max takes a turn once every max/w rounds.
                if iteration * builds[i].weight < builds[i].target { continue }
                builds[i].target += 1
                var slot = Int((builds[i].offset &+ builds[i].skip &* builds[i].next) % m)
                while slots[slot] != .max {
                    builds[i].next += 1
                    slot = Int((builds[i].offset &+ builds[i].skip &* builds[i].next) % m)
                }
                slots[slot] = UInt32(members[i].index)
                builds[i].next += 1
                filled += 1
            }
            iteration += 1
        }
        table = slots
    }

    public var isEmpty: Bool { table.isEmpty }

    public func lookup(_ hash: UInt64) -> Int? {
        guard !table.isEmpty else { return nil }
        return Int(table[Int(hash % UInt64(table.count))])
    }
}

/// The algorithms a cluster can balance with.
public enum BalancerAlgorithm: String, Sendable, Hashable, CaseIterable {
    /// Each endpoint in turn, weights ignored.
    case roundRobin = "round-robin"
    /// nginx's smooth weighted round robin: each endpoint in proportion to its weight,
    /// interleaved (weights 5,1,1 give a a b a c a a, not a a a a a b c).
    case weightedRoundRobin = "weighted-round-robin"
    /// Weighted random.
    case random
    /// Power of two choices on outstanding requests divided by weight.
    case leastRequest = "least-request"
    /// Power of two choices on peak-EWMA latency x (outstanding + 1) / weight: the default.
    case peakEWMA = "p2c-peak-ewma"
    /// Consistent hashing on a ring (sticky by a request key).
    case ringHash = "ring-hash"
    /// Maglev consistent hashing (sticky by a request key, even shares, O(1) lookups).
    case maglev
}

/// One endpoint as a balancer sees it.
public struct BalancerEndpoint: Sendable, Hashable {
    /// A stable identity (the address): consistent hashing places the endpoint by it.
    public var key: String
    /// Relative capacity; 0 takes no traffic.
    public var weight: Double
    /// Where it runs, for zone-aware routing.
    public var zone: String?

    public init(key: String, weight: Double = 1, zone: String? = nil) {
        self.key = key
        self.weight = weight
        self.zone = zone
    }
}

/// Zone-aware routing, after Envoy's priority levels with its overprovisioning factor:
/// the caller's zone takes `min(1, overprovisioning x its healthy weight share)` of the
/// traffic, so a zone that is 72% healthy or more still serves everything locally (with
/// the default 1.4), and below that the rest spills to the other zones, spread over their
/// healthy endpoints by weight.
public struct ZonePolicy: Sendable, Hashable {
    public var localZone: String?
    public var overprovisioning: Double
    /// Weight of the local zone's instances that the registry knows but that take no
    /// traffic (unhealthy, starting): they are not endpoints, yet they are capacity the
    /// zone has lost, so they count in its total. Without them a zone down to one healthy
    /// instance of ten would keep all of its callers' traffic on that one.
    public var unservedLocalWeight: Double

    public init(localZone: String? = nil, overprovisioning: Double = 1.4, unservedLocalWeight: Double = 0) {
        self.localZone = localZone
        self.overprovisioning = overprovisioning
        self.unservedLocalWeight = max(0, unservedLocalWeight)
    }
}

/// A cluster's load balancer: the endpoints, which are available (healthy and not
/// ejected), and the chosen algorithm's state. A value with no locks: the data plane keeps
/// one per cluster per event loop. Time is passed in; randomness is injected.
///
/// Hash-based algorithms ignore zones (a key must map to one endpoint wherever the caller
/// runs), as Envoy does. Slow start applies to the P2C algorithms (least-request and
/// peak-EWMA, the default).
public struct LoadBalancer<R: RandomNumberGenerator> {
    public let algorithm: BalancerAlgorithm
    public private(set) var endpoints: [BalancerEndpoint]
    public private(set) var available: [Bool]
    /// Latency and outstanding requests per endpoint (all algorithms keep them: they feed
    /// least-request and peak-EWMA, and metrics).
    public private(set) var loads: [PeakEWMA]
    public let zones: ZonePolicy
    /// The share of picks that stay in the local zone (1 when zones are not in use).
    public private(set) var localShare: Double = 1

    /// The ramp of endpoints that join a running cluster (nil: none); and when each
    /// endpoint's ramp began (0: not ramping).
    public let slowStart: SlowStartPolicy?
    private var rampStarts: [UInt64]
    private var ramping = false

    private var random: R
    private var local = Group()
    private var remote = Group()
    private var smoothCurrent: [Double]
    private var ring: HashRing?
    private var maglev: MaglevTable?

    struct Group {
        var members: [Int] = []
        var totalWeight: Double = 0
        var cursor = 0
    }

    public init(
        algorithm: BalancerAlgorithm,
        endpoints: [BalancerEndpoint],
        zones: ZonePolicy = ZonePolicy(),
        random: R,
        now: UInt64,
        decay: Duration = PeakEWMA.defaultDecay,
        prior: Duration = .milliseconds(30),
        peakFactor: Double = 2,
        slowStart: SlowStartPolicy? = nil,
        roundRobinStart: Int = 0
    ) {
        self.algorithm = algorithm
        self.slowStart = slowStart
        self.rampStarts = Array(repeating: 0, count: endpoints.count)
        self.endpoints = endpoints
        self.available = Array(repeating: true, count: endpoints.count)
        self.loads = Array(
            repeating: PeakEWMA(decay: decay, prior: prior, peakFactor: peakFactor, now: now),
            count: endpoints.count
        )
        self.zones = zones
        self.random = random
        self.smoothCurrent = Array(repeating: 0, count: endpoints.count)
        self.local.cursor = max(0, roundRobinStart)
        self.remote.cursor = max(0, roundRobinStart)
        rebuild()
    }

    /// Takes over the latency estimates of endpoints that `old` also had (matched by key),
    /// so a changed endpoint list does not send a burst to endpoints known to be slow.
    /// Endpoints new to the cluster start at its typical cost (the median of the carried
    /// estimates at `now`), not at the fixed prior: a prior far above what the others cost
    /// kept a new instance out of the picks until it had decayed (about 30 s from 30 ms to
    /// a sub-millisecond cluster), one far below would flood it.
    /// Outstanding counts start at zero: completions of requests picked by `old` go unreported.
    public mutating func carryOver(from old: LoadBalancer, now: UInt64) {
        var byKey: [String: Int] = [:]
        for (index, endpoint) in old.endpoints.enumerated() { byKey[endpoint.key] = index }
        var carried: [Double] = []
        var fresh: [Int] = []
        for (index, endpoint) in endpoints.enumerated() {
            if let oldIndex = byKey[endpoint.key] {
                var load = old.loads[oldIndex]
                load.resetPending()
                loads[index] = load
                carried.append(load.cost(at: now))
                rampStarts[index] = old.rampStarts[oldIndex]
            } else {
                fresh.append(index)
            }
        }
        guard !carried.isEmpty, !fresh.isEmpty else {
            ramping = slowStart != nil && rampStarts.contains { $0 != 0 }
            return
        }
        // Endpoints that join a running cluster ramp up (the first state has none).
        if slowStart != nil {
            for index in fresh { rampStarts[index] = max(now, 1) }
        }
        ramping = slowStart != nil && rampStarts.contains { $0 != 0 }
        carried.sort()
        let middle = carried.count / 2
        let typical = carried.count % 2 == 1 ? carried[middle] : (carried[middle - 1] + carried[middle]) / 2
        for index in fresh {
            loads[index] = PeakEWMA(
                decayNanos: loads[index].decayNanos,
                peakFactor: loads[index].peakFactor,
                costNanos: typical,
                now: now
            )
        }
    }

    /// Endpoints that can take traffic now.
    public var availableCount: Int { available.lazy.filter { $0 }.count }

    /// Marks an endpoint available or not (health checks, outlier ejection); the
    /// balancer stops or resumes sending to it at once.
    public mutating func setAvailable(_ index: Int, _ isAvailable: Bool) {
        guard available[index] != isAvailable else { return }
        available[index] = isAvailable
        rebuild()
    }

    /// The endpoint for the next request, or nil when none is available. `hash` is the
    /// request's key for ring hash and Maglev (a random one is used when nil).
    public mutating func pick(now: UInt64, hash: UInt64? = nil) -> Int? {
        switch algorithm {
        case .ringHash:
            return ring?.lookup(hash ?? random.next())
        case .maglev:
            return maglev?.lookup(hash ?? random.next())
        default:
            break
        }
        let useLocal: Bool
        if remote.members.isEmpty {
            useLocal = true
        } else if local.members.isEmpty {
            useLocal = false
        } else {
            useLocal = localShare >= 1 || Double.random(in: 0..<1, using: &random) < localShare
        }
        return pick(inLocalGroup: useLocal, now: now)
    }

    public mutating func requestStarted(_ index: Int) {
        loads[index].requestStarted()
    }

    public mutating func requestFinished(_ index: Int, rtt: Duration, now: UInt64) {
        loads[index].requestFinished(rtt: rtt, now: now)
    }

    // MARK: picking within a group

    private mutating func pick(inLocalGroup isLocal: Bool, now: UInt64) -> Int? {
        let group = isLocal ? local : remote
        let members = group.members
        switch members.count {
        case 0: return nil
        case 1: return members[0]
        default: break
        }
        switch algorithm {
        case .roundRobin:
            let index = members[group.cursor % members.count]
            if isLocal {
                local.cursor = (group.cursor + 1) % members.count
            } else {
                remote.cursor = (group.cursor + 1) % members.count
            }
            return index
        case .weightedRoundRobin:
            // nginx: every member gains its weight, the richest is picked and pays the total.
            var best = members[0]
            for member in members {
                smoothCurrent[member] += endpoints[member].weight
                if smoothCurrent[member] > smoothCurrent[best] { best = member }
            }
            smoothCurrent[best] -= group.totalWeight
            return best
        case .random:
            var target = Double.random(in: 0..<group.totalWeight, using: &random)
            for member in members {
                target -= endpoints[member].weight
                if target < 0 { return member }
            }
            return members[members.count - 1]
        case .leastRequest, .peakEWMA:
            let a = Int.random(in: 0..<members.count, using: &random)
            var b = Int.random(in: 0..<(members.count - 1), using: &random)
            if b >= a { b += 1 }
            if ramping {
                let keepsA = rampKeeps(members[a], now: now)
                let keepsB = rampKeeps(members[b], now: now)
                if keepsA != keepsB { return keepsA ? members[a] : members[b] }
            }
            let costA = cost(members[a], now: now)
            let costB = cost(members[b], now: now)
            return costB < costA ? members[b] : members[a]
        case .ringHash, .maglev:
            return nil
        }
    }

    /// Whether a ramping endpoint drawn as a candidate stays in the draw: with the
    /// probability of its slow-start factor (always once its ramp is over). Scaling its
    /// weight instead would not ramp under P2C: at light load, where nothing is pending,
    /// any endpoint costlier than its rival loses every draw, so half a weight is no
    /// traffic at all until the ramp ends.
    private mutating func rampKeeps(_ index: Int, now: UInt64) -> Bool {
        guard let slowStart, rampStarts[index] != 0 else { return true }
        let factor = slowStart.factor(elapsedNanos: now > rampStarts[index] ? now - rampStarts[index] : 0)
        if factor >= 1 {
            rampStarts[index] = 0
            ramping = rampStarts.contains { $0 != 0 }
            return true
        }
        return Double.random(in: 0..<1, using: &random) < factor
    }

    private func cost(_ index: Int, now: UInt64) -> Double {
        let weight = max(endpoints[index].weight, .leastNonzeroMagnitude)
        if algorithm == .leastRequest {
            return Double(loads[index].pending + 1) / weight
        }
        return loads[index].load(at: now, weight: weight)
    }

    // MARK: derived state

    private mutating func rebuild() {
        var newLocal = Group()
        var newRemote = Group()
        var localTotalWeight = 0.0
        for (index, endpoint) in endpoints.enumerated() {
            let isLocal = zones.localZone == nil || endpoint.zone == zones.localZone
            if isLocal { localTotalWeight += max(endpoint.weight, 0) }
            guard available[index], endpoint.weight > 0 else { continue }
            if isLocal {
                newLocal.members.append(index)
                newLocal.totalWeight += endpoint.weight
            } else {
                newRemote.members.append(index)
                newRemote.totalWeight += endpoint.weight
            }
        }
        if zones.localZone != nil { localTotalWeight += zones.unservedLocalWeight }
        newLocal.cursor = newLocal.members.isEmpty ? 0 : local.cursor % newLocal.members.count
        newRemote.cursor = newRemote.members.isEmpty ? 0 : remote.cursor % newRemote.members.count
        local = newLocal
        remote = newRemote
        if zones.localZone == nil || localTotalWeight == 0 {
            localShare = local.members.isEmpty ? 0 : 1
        } else {
            localShare = min(1, zones.overprovisioning * local.totalWeight / localTotalWeight)
        }
        for index in smoothCurrent.indices { smoothCurrent[index] = 0 }
        let members = endpoints.indices.filter { available[$0] }.map {
            (index: $0, key: endpoints[$0].key, weight: endpoints[$0].weight)
        }
        switch algorithm {
        case .ringHash: ring = HashRing(members: members)
        case .maglev: maglev = MaglevTable(members: members)
        default: break
        }
    }
}

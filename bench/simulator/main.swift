// The traffic simulator: balancers and subsetting under controlled conditions, on a
// simulated clock (no sockets), so a run is fast, reproducible and comparable.
//
//     swift run -c release meshwork-sim [--requests N] [--seed S] [--decay-ms MS] [--peak-factor X]
//
// Prints markdown tables (docs/traffic.md holds a copy of the last run).
import MeshworkTraffic

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

var arguments = CommandLine.arguments.dropFirst()
var requestCount = 200_000
var seed: UInt64 = 42
// Peak-EWMA's time constant and peak bound, to compare settings (defaults: the data plane's).
var tuning = Tuning()
while let flag = arguments.popFirst() {
    switch flag {
    case "--requests": requestCount = Int(arguments.popFirst() ?? "") ?? requestCount
    case "--seed": seed = UInt64(arguments.popFirst() ?? "") ?? seed
    case "--decay-ms": tuning.decay = .milliseconds(Int(arguments.popFirst() ?? "") ?? 1000)
    case "--peak-factor": tuning.peakFactor = Double(arguments.popFirst() ?? "") ?? tuning.peakFactor
    default:
        print("usage: meshwork-sim [--requests N] [--seed S] [--decay-ms MS] [--peak-factor X]")
        exit(2)
    }
}

// MARK: the model

struct Tuning {
    var decay = PeakEWMA.defaultDecay
    var peakFactor = 2.0
}

/// A backend: `workers` requests served at once, each taking an exponentially distributed
/// time with mean `meanMs`; up to `queueLimit` wait, beyond that it answers 503 at once.
struct Backend {
    var meanMs: Double
    var workers: Int
    var queueLimit: Int
    /// A request stalls (a pause, a page fault, a slow disk) with this probability, for
    /// `stallMs` more: what makes identical instances look different for a moment.
    var stallProbability = 0.0
    var stallMs = 0.0
    var busy = 0
    var queue: [Int] = []
    var served = 0
    var rejected = 0
}

struct Request {
    var client: Int
    var backend: Int
    var start: Double
}

/// A min-heap of timed events.
struct EventQueue {
    enum Kind {
        case arrival
        case completion(request: Int)
        case degrade
        case join
    }
    private var heap: [(time: Double, order: Int, kind: Kind)] = []
    private var order = 0

    var isEmpty: Bool { heap.isEmpty }

    mutating func push(_ time: Double, _ kind: Kind) {
        order += 1
        heap.append((time, order, kind))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if less(heap[child], heap[parent]) {
                heap.swapAt(child, parent)
                child = parent
            } else {
                break
            }
        }
    }

    mutating func pop() -> (time: Double, kind: Kind)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, less(heap[left], heap[smallest]) { smallest = left }
            if right < heap.count, less(heap[right], heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return (top.time, top.kind)
    }

    private func less(_ a: (time: Double, order: Int, kind: Kind), _ b: (time: Double, order: Int, kind: Kind)) -> Bool
    {
        a.time < b.time || (a.time == b.time && a.order < b.order)
    }
}

struct Scenario {
    var name: String
    var backends: [Backend]
    /// Mean arrivals per millisecond (all clients together).
    var rate: Double
    /// (backend, factor, at fraction of the run): one backend turns slower mid-run.
    var degrade: (backend: Int, factor: Double, at: Double)?
    /// A backend added at this fraction of the run (scale out), as the registry pushes it.
    var join: (backend: Backend, at: Double)?
    var clients = 8
}

struct Outcome {
    var p50: Double
    var p99: Double
    var errorRate: Double
    var shares: [Double]
    /// The lowest share any backend got in a 10 s window (of simulated time) it was in
    /// for whole, relative to a fair share (1 / backends).
    var minWindowShare: Double
    /// From the join to the new backend's first request, ms; and its share of the 10 s
    /// after the join, relative to a fair share.
    var joinFirstRequestMs: Double?
    var joinShare: Double?
}

func exponential(_ mean: Double, _ random: inout SplitMix64) -> Double {
    -mean * log(1 - Double.random(in: 0..<1, using: &random))
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
}

func simulate(
    _ scenario: Scenario,
    algorithm: BalancerAlgorithm,
    requests: Int,
    seed: UInt64,
    tuning: Tuning
) -> Outcome {
    var random = SplitMix64(seed: seed)
    var backends = scenario.backends
    let endpoints = backends.indices.map { BalancerEndpoint(key: "10.0.0.\($0):8080", weight: 1) }
    // Every client has its own balancer, as every sidecar does.
    var balancers = (0..<scenario.clients).map { client in
        LoadBalancer(
            algorithm: algorithm,
            endpoints: endpoints,
            random: SplitMix64(seed: seed &+ UInt64(client) &* 7919),
            now: 0,
            decay: tuning.decay,
            peakFactor: tuning.peakFactor,
            roundRobinStart: client
        )
    }
    var events = EventQueue()
    var inFlight: [Int: Request] = [:]
    var nextID = 0
    var latencies: [Double] = []
    latencies.reserveCapacity(requests)
    var errors = 0
    var sent = 0
    let duration = Double(requests) / scenario.rate
    if let degrade = scenario.degrade { events.push(duration * degrade.at, .degrade) }
    let joinAt = scenario.join.map { duration * $0.at }
    if let joinAt { events.push(joinAt, .join) }
    // Requests sent to each backend per 10 s window.
    let windowMs = 10_000.0
    var windows: [[Int]] = []
    var joinFirstRequest: Double?
    var joinServed = 0
    var sentAfterJoin = 0
    events.push(exponential(1 / scenario.rate, &random), .arrival)

    func nanos(_ ms: Double) -> UInt64 { UInt64(max(0, ms) * 1_000_000) }

    func startService(_ id: Int, at now: Double) {
        let backend = inFlight[id]!.backend
        backends[backend].busy += 1
        var service = exponential(backends[backend].meanMs, &random)
        if backends[backend].stallProbability > 0,
            Double.random(in: 0..<1, using: &random) < backends[backend].stallProbability
        {
            service += backends[backend].stallMs
        }
        events.push(now + service, .completion(request: id))
    }

    while let (now, kind) = events.pop() {
        switch kind {
        case .degrade:
            if let degrade = scenario.degrade { backends[degrade.backend].meanMs *= degrade.factor }
        case .join:
            guard let join = scenario.join else { continue }
            backends.append(join.backend)
            let grown = backends.indices.map { BalancerEndpoint(key: "10.0.0.\($0):8080", weight: 1) }
            // What the data plane does on a pushed change: a new balancer, estimates carried over.
            for client in balancers.indices {
                var next = LoadBalancer(
                    algorithm: algorithm,
                    endpoints: grown,
                    random: SplitMix64(seed: seed &+ UInt64(client) &* 104_729),
                    now: nanos(now),
                    decay: tuning.decay,
                    peakFactor: tuning.peakFactor,
                    roundRobinStart: client
                )
                next.carryOver(from: balancers[client], now: nanos(now))
                balancers[client] = next
            }
        case .arrival:
            sent += 1
            if sent < requests { events.push(now + exponential(1 / scenario.rate, &random), .arrival) }
            let client = Int.random(in: 0..<scenario.clients, using: &random)
            let hash = algorithm == .ringHash || algorithm == .maglev ? random.next() : nil
            guard let backend = balancers[client].pick(now: nanos(now), hash: hash) else {
                errors += 1
                continue
            }
            balancers[client].requestStarted(backend)
            let window = Int(now / windowMs)
            while windows.count <= window { windows.append([]) }
            while windows[window].count < backends.count { windows[window].append(0) }
            windows[window][backend] += 1
            if let joinAt, now >= joinAt, now < joinAt + windowMs {
                sentAfterJoin += 1
                if backend == backends.count - 1 {
                    joinServed += 1
                    if joinFirstRequest == nil { joinFirstRequest = now - joinAt }
                }
            }
            let id = nextID
            nextID += 1
            inFlight[id] = Request(client: client, backend: backend, start: now)
            if backends[backend].busy < backends[backend].workers {
                startService(id, at: now)
            } else if backends[backend].queue.count < backends[backend].queueLimit {
                backends[backend].queue.append(id)
            } else {
                // Refused at once: a fast failure, which the balancer hears as such.
                backends[backend].rejected += 1
                errors += 1
                inFlight[id] = nil
                balancers[client].requestFinished(backend, rtt: .microseconds(100), now: nanos(now))
            }
        case .completion(let id):
            guard let request = inFlight.removeValue(forKey: id) else { continue }
            let backend = request.backend
            backends[backend].busy -= 1
            backends[backend].served += 1
            let latency = now - request.start
            latencies.append(latency)
            balancers[request.client].requestFinished(
                backend,
                rtt: .nanoseconds(Int64(latency * 1_000_000)),
                now: nanos(now)
            )
            if !backends[backend].queue.isEmpty {
                let next = backends[backend].queue.removeFirst()
                startService(next, at: now)
            }
        }
    }
    latencies.sort()
    let total = Double(backends.reduce(0) { $0 + $1.served + $1.rejected })
    // Whole windows only, and only the backends that were there for all of one.
    var minWindowShare = Double.infinity
    for (index, counts) in windows.enumerated().dropLast() {
        let start = Double(index) * windowMs
        let members =
            joinAt.map { start >= $0 ? backends.count : (start + windowMs <= $0 ? backends.count - 1 : 0) }
            ?? backends.count
        guard members > 0 else { continue }
        let inWindow = counts.prefix(members).reduce(0, +)
        guard inWindow > 0 else { continue }
        for backend in 0..<members {
            let count = backend < counts.count ? counts[backend] : 0
            minWindowShare = min(minWindowShare, Double(count) / Double(inWindow) * Double(members))
        }
    }
    let joinShare =
        joinAt.map { _ in sentAfterJoin > 0 ? Double(joinServed) / Double(sentAfterJoin) * Double(backends.count) : 0 }
    return Outcome(
        p50: percentile(latencies, 0.5),
        p99: percentile(latencies, 0.99),
        errorRate: Double(errors) / Double(max(sent, 1)),
        shares: backends.map { Double($0.served + $0.rejected) / max(total, 1) },
        minWindowShare: minWindowShare,
        joinFirstRequestMs: joinFirstRequest,
        joinShare: joinShare
    )
}

func format(_ value: Double, _ digits: Int = 1) -> String {
    guard value.isFinite else { return "-" }
    var text = String(Int((value * pow(10, Double(digits))).rounded()))
    if digits > 0 {
        while text.count <= digits { text = "0" + text }
        text.insert(".", at: text.index(text.endIndex, offsetBy: -digits))
    }
    return text
}

// MARK: balancer scenarios

/// Ten backends of uneven speed (5 to 12 ms) and capacity (4 to 12 workers), at about 70%
/// of their total capacity.
func unevenBackends() -> [Backend] {
    (0..<10).map { index in
        Backend(meanMs: 5 + Double(index % 4) * 2.5, workers: 4 + (index % 3) * 4, queueLimit: 64)
    }
}

func capacityPerMs(_ backends: [Backend]) -> Double {
    backends.reduce(0) { $0 + Double($1.workers) / $1.meanMs }
}

var scenarios: [Scenario] = []
do {
    var slow = unevenBackends()
    let rate = capacityPerMs(slow) * 0.7
    slow[0].meanMs *= 10
    scenarios.append(Scenario(name: "one backend 10x slower", backends: slow, rate: rate))
    let degrading = unevenBackends()
    scenarios.append(
        Scenario(
            name: "one backend turns 10x slower mid-run",
            backends: degrading,
            rate: capacityPerMs(degrading) * 0.7,
            degrade: (backend: 0, factor: 10, at: 0.5)
        )
    )
    let even = unevenBackends()
    scenarios.append(Scenario(name: "uneven backends, all healthy", backends: even, rate: capacityPerMs(even) * 0.7))
}

let algorithms: [BalancerAlgorithm] = [.roundRobin, .random, .leastRequest, .peakEWMA, .ringHash, .maglev]
print("# Traffic simulator (\(requestCount) requests per run, seed \(seed))\n")
var p99s: [String: [BalancerAlgorithm: Double]] = [:]
for scenario in scenarios {
    print("## \(scenario.name)\n")
    print("10 backends (mean service 5-12.5 ms, 4-12 workers, queue 64), \(scenario.clients) clients, load 70%.\n")
    print("| balancer | p50 ms | p99 ms | errors % | share of backend 0 % | max share % | min share % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for algorithm in algorithms {
        let outcome = simulate(scenario, algorithm: algorithm, requests: requestCount, seed: seed, tuning: tuning)
        p99s[scenario.name, default: [:]][algorithm] = outcome.p99
        print(
            "| \(algorithm.rawValue) | \(format(outcome.p50)) | \(format(outcome.p99)) | "
                + "\(format(outcome.errorRate * 100, 2)) | \(format(outcome.shares[0] * 100)) | "
                + "\(format((outcome.shares.max() ?? 0) * 100)) | \(format((outcome.shares.min() ?? 0) * 100)) |"
        )
    }
    print()
}
for (name, values) in p99s.sorted(by: { $0.key < $1.key }) {
    if let ewma = values[.peakEWMA], let rr = values[.roundRobin] {
        let verdict = ewma <= rr / 3 ? "meets" : "MISSES"
        print("- \(name): peak-EWMA p99 / round-robin p99 = \(format(ewma / rr, 3)) (\(verdict) the 1/3 target)")
    }
}
print()

// MARK: identical backends: fair shares and new capacity

print("## Identical backends: fair shares and new capacity\n")
print(
    "3 backends (mean service 2 ms, exponential, 4 workers), \(8) clients, load 50%; "
        + "shares over 10 s windows of simulated time, relative to a fair share.\n"
)
print(
    "| scenario | balancer | min 10 s share / fair | joined: first request ms | joined: first 10 s share / fair | backend 0 share % |"
)
print("|---|---|---:|---:|---:|---:|")
var fairness: [String: Outcome] = [:]
do {
    let identical = (0..<3).map { _ in Backend(meanMs: 2, workers: 4, queueLimit: 64) }
    let rate = capacityPerMs(identical) * 0.5
    var slowOne = identical
    slowOne[0].meanMs *= 5
    // One caller (a sidecar's event loop) at a moderate rate over fast instances that now
    // and then stall: rarely more than one request in flight.
    let stalling = (0..<3).map { _ in
        Backend(meanMs: 0.3, workers: 4, queueLimit: 64, stallProbability: 0.001, stallMs: 20)
    }
    var oneCaller = Scenario(name: "3 identical, sub-ms with rare 20 ms stalls, 1 caller", backends: stalling, rate: 1)
    oneCaller.clients = 1
    let cases = [
        Scenario(name: "3 identical", backends: identical, rate: rate),
        oneCaller,
        Scenario(
            name: "3 identical, a 4th joins",
            backends: identical,
            rate: rate,
            join: (backend: Backend(meanMs: 2, workers: 4, queueLimit: 64), at: 0.5)
        ),
        Scenario(name: "one of 3 is 5x slower", backends: slowOne, rate: rate * 0.8),
    ]
    for scenario in cases {
        for algorithm in [BalancerAlgorithm.roundRobin, .leastRequest, .peakEWMA] {
            let outcome = simulate(scenario, algorithm: algorithm, requests: requestCount, seed: seed, tuning: tuning)
            if algorithm == .peakEWMA { fairness[scenario.name] = outcome }
            print(
                "| \(scenario.name) | \(algorithm.rawValue) | \(format(outcome.minWindowShare, 2)) | "
                    + "\(outcome.joinFirstRequestMs.map { format($0, 1) } ?? "-") | "
                    + "\(outcome.joinShare.map { format($0, 2) } ?? "-") | \(format(outcome.shares[0] * 100)) |"
            )
        }
    }
    print()
    if let even = fairness["3 identical"], let joined = fairness["3 identical, a 4th joins"],
        let stalls = fairness[oneCaller.name],
        let slow = fairness["one of 3 is 5x slower"]
    {
        let fair = min(even.minWindowShare, joined.minWindowShare, stalls.minWindowShare)
        print(
            "- peak-EWMA, identical backends: lowest 10 s share \(format(fair, 2)) of fair (\(fair >= 0.5 ? "meets" : "MISSES") the 0.5 target)"
        )
        let first = joined.joinFirstRequestMs ?? .infinity
        print(
            "- peak-EWMA, a joining backend serves after \(format(first, 1)) ms (\(first <= 1000 ? "meets" : "MISSES") the 1 s target)"
        )
        print("- peak-EWMA, the 5x slower backend gets \(format(slow.shares[0] * 100)) % (fair: 33.3 %)")
    }
    print()
}

// MARK: subsetting

print("## Deterministic subsetting (aperture), k = 10 over 100 backends\n")
print("| clients | backends per client | connections per backend (min-max) | load max/mean | moved on +1 backend |")
print("|---:|---:|---:|---:|---:|")
var worst = 0.0
for clients in [10, 37, 100, 300, 1000] {
    var load = Array(repeating: 0.0, count: 100)
    var connections = Array(repeating: 0, count: 100)
    var sizes = 0
    var moved = 0
    for client in 0..<clients {
        let weights = DeterministicAperture.weights(
            backendCount: 100,
            clientIndex: client,
            clientCount: clients,
            subsetSize: 10
        )
        let total = weights.reduce(0, +)
        for (j, w) in weights.enumerated() where w > 0 {
            load[j] += w / total
            connections[j] += 1
            sizes += 1
        }
        let grown = DeterministicAperture.weights(
            backendCount: 101,
            clientIndex: client,
            clientCount: clients,
            subsetSize: 10
        )
        let before = Set(weights.indices.filter { weights[$0] > 0 })
        let after = Set(grown.indices.filter { grown[$0] > 0 && $0 < 100 })
        moved += before.symmetricDifference(after).count
    }
    let ratio = load.max()! / (load.reduce(0, +) / 100)
    worst = max(worst, ratio)
    print(
        "| \(clients) | \(format(Double(sizes) / Double(clients))) | \(connections.min()!)-\(connections.max()!) | "
            + "\(format(ratio, 3)) | \(format(Double(moved) / Double(clients))) |"
    )
}
print()
// For contrast: each client picks 10 backends at random (what naive subsetting does).
var random = SplitMix64(seed: seed)
var randomLoad = Array(repeating: 0.0, count: 100)
for _ in 0..<300 {
    var picked: Set<Int> = []
    while picked.count < 10 { picked.insert(Int.random(in: 0..<100, using: &random)) }
    for j in picked { randomLoad[j] += 0.1 }
}
print("- random subsets of 10 for 300 clients, for contrast: load max/mean = \(format(randomLoad.max()! / 3, 3))")
print("- aperture worst max/mean above: \(format(worst, 3)) (\(worst < 1.15 ? "meets" : "MISSES") the 1.15 target)")

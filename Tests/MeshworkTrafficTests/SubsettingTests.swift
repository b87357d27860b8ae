import MeshworkTraffic
import Testing

@Suite("Deterministic aperture subsetting")
struct SubsettingTests {
    /// Load each backend receives when every client spreads one unit of traffic over its
    /// subset in proportion to the weights.
    func loads(backends: Int, clients: Int, k: Int) -> (load: [Double], connections: [Int]) {
        var load = Array(repeating: 0.0, count: backends)
        var connections = Array(repeating: 0, count: backends)
        for client in 0..<clients {
            let weights = DeterministicAperture.weights(
                backendCount: backends,
                clientIndex: client,
                clientCount: clients,
                subsetSize: k
            )
            let total = weights.reduce(0, +)
            for (j, w) in weights.enumerated() where w > 0 {
                load[j] += w / total
                connections[j] += 1
            }
        }
        return (load, connections)
    }

    @Test(arguments: [(100, 300), (100, 37), (100, 1000), (50, 7)])
    func loadStaysEven(backends: Int, clients: Int) {
        let (load, _) = loads(backends: backends, clients: clients, k: 10)
        let mean = load.reduce(0, +) / Double(backends)
        let ratio = load.max()! / mean
        #expect(ratio < 1.15, "max/mean \(ratio) for \(clients) clients over \(backends) backends")
        #expect(load.min()! > 0, "every backend gets traffic")
    }

    @Test func eachClientTalksToAboutK() {
        for client in 0..<300 {
            let weights = DeterministicAperture.weights(
                backendCount: 100,
                clientIndex: client,
                clientCount: 300,
                subsetSize: 10
            )
            let size = weights.filter { $0 > 0 }.count
            #expect(size >= 10 && size <= 11, "client \(client) has \(size) backends")
            // The full arc is k backends' worth of weight.
            #expect(abs(weights.reduce(0, +) - 10) < 1e-9)
        }
    }

    @Test func fewClientsStillCoverEveryBackend() {
        // 3 clients, 100 backends, k = 10: the arcs widen to 1/3 of the ring each.
        let (load, connections) = loads(backends: 100, clients: 3, k: 10)
        #expect(connections.allSatisfy { $0 >= 1 })
        #expect(load.max()! / (load.reduce(0, +) / 100) < 1.15)
    }

    @Test func aNewBackendMovesLittle() {
        var changed = 0
        for client in 0..<300 {
            let before = DeterministicAperture.weights(
                backendCount: 100,
                clientIndex: client,
                clientCount: 300,
                subsetSize: 10
            )
            let after = DeterministicAperture.weights(
                backendCount: 101,
                clientIndex: client,
                clientCount: 300,
                subsetSize: 10
            )
            // Backend 100 is new (appended at the end of the sorted order).
            let old = Set(before.indices.filter { before[$0] > 0 })
            let new = Set(after.indices.filter { after[$0] > 0 && $0 < 100 })
            changed += old.symmetricDifference(new).count
        }
        // At most a couple of backends per client change on average (SRE-book shuffled
        // subsets would replace most of them).
        #expect(Double(changed) / 300 <= 2.0, "average change \(Double(changed) / 300)")
    }

    /// Issue 17, item 3: ten callers over 40 backends with k = 8 each talk to exactly 8,
    /// and an eleventh caller (whichever rank it takes) moves few assignments of the others.
    @Test func anotherCallerMovesFewAssignments() {
        func subset(_ client: Int, of clients: Int) -> Set<Int> {
            let weights = DeterministicAperture.weights(
                backendCount: 40,
                clientIndex: client,
                clientCount: clients,
                subsetSize: 8
            )
            return Set(weights.indices.filter { weights[$0] > 0 })
        }
        for client in 0..<10 { #expect(subset(client, of: 10).count == 8) }
        var worst = 0.0
        for newRank in 0...10 {
            var moved = 0
            for client in 0..<10 {
                // The callers at or after the newcomer's rank move up one place.
                let after = client >= newRank ? client + 1 : client
                moved += subset(client, of: 10).subtracting(subset(after, of: 11)).count
            }
            worst = max(worst, Double(moved) / 10)
        }
        // Of each caller's 8 backends, 1.5 change on average at the worst rank.
        #expect(worst <= 2, "\(worst) backends per caller moved")
    }

    @Test func subsetLargerThanBackendsIsEverything() {
        #expect(
            DeterministicAperture.weights(backendCount: 5, clientIndex: 0, clientCount: 10, subsetSize: 10)
                == [1, 1, 1, 1, 1]
        )
        #expect(DeterministicAperture.weights(backendCount: 0, clientIndex: 0, clientCount: 1, subsetSize: 3) == [])
    }
}

/// Deterministic subsetting by aperture (Finagle's "deterministic aperture", from the
/// Twitter engineering post "Deterministic Aperture: A distributed, load balancing
/// algorithm", 2019): clients and backends are laid out evenly on the same unit ring —
/// client `i` of `N` at `i/N`, backend `j` of `B` owning the slice `[j/B, (j+1)/B)` — and
/// each client talks to the backends under its aperture, an arc starting at its own
/// position whose width is `k/B` rounded up to a whole number `m` of client spacings,
/// `m/N`. Every point of the ring is then under exactly `m` arcs, and a backend only
/// partly under an arc gets a proportional weight, so every backend receives the same
/// share of the total load while each client holds about `k + 1` connections instead of
/// `B` (a few more when `N` is small and the rounding widens the arc).
///
/// Backends must be in a stable order (sorted by key): when one comes or goes, the slices
/// shift by at most `1/B` and each client's subset changes by one or two backends, not
/// wholesale as with the shuffled subsets of the SRE book.
public enum DeterministicAperture {
    /// The weight (0 to 1, the fraction of its slice under the arc) of each backend in
    /// client `clientIndex`'s subset; 0 means not in the subset.
    public static func weights(backendCount: Int, clientIndex: Int, clientCount: Int, subsetSize: Int) -> [Double] {
        guard backendCount > 0 else { return [] }
        let clients = max(clientCount, 1)
        guard subsetSize > 0, subsetSize < backendCount else {
            return Array(repeating: 1, count: backendCount)
        }
        let b = Double(backendCount)
        let spacings = (Double(subsetSize) / b * Double(clients) - 1e-9).rounded(.up)
        let width = min(1, max(1, spacings) / Double(clients))
        let start = Double(((clientIndex % clients) + clients) % clients) / Double(clients)
        var weights = Array(repeating: 0.0, count: backendCount)
        // The arc [start, start + width) may wrap past 1: cover it in one or two pieces.
        var pieces = [(start, min(start + width, 1))]
        if start + width > 1 { pieces.append((0, start + width - 1)) }
        for (low, high) in pieces {
            let first = Int((low * b).rounded(.down))
            let last = min(backendCount - 1, Int((high * b).rounded(.up)))
            guard first <= last else { continue }
            for j in first...last {
                let sliceLow = Double(j) / b
                let sliceHigh = Double(j + 1) / b
                let overlap = min(high, sliceHigh) - max(low, sliceLow)
                if overlap > 1e-12 { weights[j] += overlap * b }
            }
        }
        return weights.map { min(1, $0) }
    }
}

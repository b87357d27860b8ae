/// Plain round robin over a list of endpoints: each pick takes the next one in turn.
///
/// The data plane keeps one balancer per cluster per event loop, so it is a value with no
/// locking. The traffic issue brings the smarter balancers (P2C peak-EWMA and friends)
/// behind the same `pick` shape.
public struct RoundRobinBalancer: Sendable {
    private var next: Int

    /// `start` offsets the first pick, so that several event loops do not all begin with
    /// endpoint 0.
    public init(start: Int = 0) {
        self.next = max(0, start)
    }

    /// The index of the endpoint to use among `count`, or nil when there are none.
    public mutating func pick(count: Int) -> Int? {
        guard count > 0 else { return nil }
        let index = next % count
        next = index + 1
        return index
    }
}

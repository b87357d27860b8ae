/// Who waits until a store revision is applied by the actor that follows the store
/// (`Controller`, `IdentityService`): a commit returns once its own revision has come back
/// through the change stream, so what it wrote is what the next read serves.
///
/// Bounded in time: a waiter is let go (told `false`) after `timeout`, and the follower
/// then opens its change stream again — a revision that never comes means the stream is
/// dead without having ended (a silent connection, a member cut off), and a mutation
/// waiting forever would hold every mutation after it (heartbeats included) with it.
struct RevisionWaiters {
    static let timeout: Duration = .seconds(10)

    private var waiting: [Int: (revision: Int64, continuation: CheckedContinuation<Bool, Never>)] = [:]
    private var nextID = 0

    /// An id for the next waiter (its timer needs it before it waits).
    mutating func reserve() -> Int {
        nextID += 1
        return nextID
    }

    mutating func add(_ id: Int, _ revision: Int64, _ continuation: CheckedContinuation<Bool, Never>) {
        waiting[id] = (revision, continuation)
    }

    /// Lets go, as applied, everyone waiting for `revision` or an earlier one.
    mutating func release(through revision: Int64) {
        for (id, waiter) in waiting where waiter.revision <= revision {
            waiting[id] = nil
            waiter.continuation.resume(returning: true)
        }
    }

    /// Lets `id` go as not applied; false when it was already let go.
    mutating func expire(_ id: Int) -> Bool {
        guard let waiter = waiting.removeValue(forKey: id) else { return false }
        waiter.continuation.resume(returning: false)
        return true
    }

    /// Lets everyone go as not applied (the follower stopped).
    mutating func releaseAll() {
        let all = waiting.values
        waiting.removeAll()
        for waiter in all { waiter.continuation.resume(returning: false) }
    }
}

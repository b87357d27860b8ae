import ServiceLifecycle
import Synchronization

/// Opens once; everyone waiting (and every later wait) goes on. What the discovery agent's
/// services wait on until the workload identity is in place.
final class Latch: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var next = 0
    }
    private let state = Mutex(State())

    init(open: Bool = false) {
        state.withLock { $0.isOpen = open }
    }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once open; throws `CancellationError` when the task is cancelled first.
    func wait() async throws {
        let id = state.withLock { state in
            defer { state.next += 1 }
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.isOpen || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
        try Task.checkCancellation()
    }
}

/// A sleep that can be ended early: `wake()` ends the current sleep (or the next one, when
/// none is in progress), cancellation ends it with `CancellationError`. A wake may arrive
/// for a reason that no longer holds, so the sleeper checks its condition again.
final class Wakeup: Sendable {
    private struct State {
        var woken = false
        var sleeper: CheckedContinuation<Void, Never>?
    }
    private let state = Mutex(State())

    func wake() {
        state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let sleeper = state.sleeper else {
                state.woken = true
                return nil
            }
            state.sleeper = nil
            return sleeper
        }?.resume()
    }

    /// One sleeper at a time.
    func sleep(for duration: Duration) async throws {
        let timer = Task { [weak self] in
            guard (try? await Task.sleep(for: duration)) != nil else { return }
            self?.wake()
        }
        defer { timer.cancel() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.woken || Task.isCancelled {
                        state.woken = false
                        return true
                    }
                    state.sleeper = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            wake()
        }
        try Task.checkCancellation()
    }
}

/// Runs a service's work until it ends or graceful shutdown cancels it, then waits for the
/// shutdown (a service that returned early would end the whole group). An error other than
/// the cancellation stops the group: a refused join token, a mesh that requires an identity
/// the sidecar lacks.
func runUntilShutdown(_ operation: @Sendable @escaping () async throws -> Void) async throws {
    do {
        try await cancelWhenGracefulShutdown(operation)
    } catch is CancellationError {
    }
    try? await gracefulShutdown()
}

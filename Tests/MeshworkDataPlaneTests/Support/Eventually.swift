/// Bounded (`seconds`, 10 by default): until `condition` holds, polling every 100 ms; then
/// whether it holds. What a test waits on instead of a fixed sleep.
func eventually(seconds: Int = 10, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(100))
    }
    return try await condition()
}

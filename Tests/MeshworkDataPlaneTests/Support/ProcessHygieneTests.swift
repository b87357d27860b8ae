import Foundation
import Testing

/// The suite starts several thousand helper processes (curl, Python peers, sidecars): each
/// must give back its descriptors, or the test process runs out of them, and Foundation's
/// `Process.run()` crashes long before the limit (see `Command.release`).
@Suite struct ProcessHygieneTests {
    private static func openDescriptors() throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
    }

    @Test func finishedHelperProcessesLeaveNoDescriptorOpen() async throws {
        // The first runs create what Foundation keeps for good (its process manager thread).
        _ = try await Command.run(["true"])
        _ = try await Curl.run(["http://127.0.0.1:1/"], timeout: 2)
        let before = try Self.openDescriptors()
        for _ in 0..<20 {
            #expect(try await Command.run(["true"]).exitCode == 0)
            #expect(try await Curl.run(["http://127.0.0.1:1/"], timeout: 2).exitCode != 0)
        }
        let after = try Self.openDescriptors()
        // 40 processes: without the release, 40 descriptors more.
        #expect(after - before <= 4, "\(before) descriptors open before, \(after) after 40 processes")
    }
}

import Foundation
import MeshworkDemo
import NIOCore
import NIOPosix
import Testing

/// The `meshwork` binary itself (built by `swift test` next to the test bundle): config
/// errors as an operator sees them, and SIGTERM draining a real process.
@Suite("meshwork command", .serialized)
struct CLITests {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("meshwork").path
    }

    private func writeConfig(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mw-\(UUID().uuidString).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func badConfigIsRefusedWithEveryFieldPath() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary))
        let path = try writeConfig("threads: many\nclusters:\n  - name: a\n    connectTimeout: soon\n")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await Command.run([Self.binary, "sidecar", "--config", path])
        #expect(result.exitCode == 1)
        #expect(result.output.contains("threads: expected an integer, found \"many\""))
        #expect(result.output.contains("clusters[0].connectTimeout: expected a duration"))
        #expect(!result.output.contains("Usage:"))
    }

    @Test func checkAcceptsAValidConfig() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary))
        let path = try writeConfig("admin: 127.0.0.1:0\n")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try await Command.run([Self.binary, "sidecar", "--config", path, "--check"])
        #expect(result.exitCode == 0)
        #expect(result.output.contains("valid"))
    }

    @Test func sigtermDrainsInFlightRequestsThenExits() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary))
        let app = try await TestMesh.startApp("orders-1")
        defer { Task { await app.stop() } }
        let port = try await TestMesh.freePort()
        let admin = try await TestMesh.freePort()
        let path = try writeConfig(
            """
            admin: 127.0.0.1:\(admin)
            upstreams: [{listen: 127.0.0.1:\(port), cluster: orders}]
            clusters: [{name: orders, protocol: http1, endpoints: [127.0.0.1:\(app.port)]}]
            timeouts: {drain: 5s}
            """
        )
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["sidecar", "--config", path, "--threads", "1", "--log-level", "warning"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        async let exitCode = Command.wait(for: process)
        defer { if process.isRunning { process.terminate() } }

        var ready = false
        for _ in 0..<100 where !ready {
            ready = (try? await Curl.get("http://127.0.0.1:\(admin)/ready").status) == 200
            if !ready { try await Task.sleep(for: .milliseconds(50)) }
        }
        try #require(ready)
        async let inFlight = Curl.get("http://127.0.0.1:\(port)/delay/800")
        for _ in 0..<100 where app.requestCount == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        kill(process.processIdentifier, SIGTERM)
        let finished = try await inFlight
        #expect(finished.status == 200)
        #expect(finished.text == "slept 800ms\n")
        #expect(try await exitCode == 0)
    }
}

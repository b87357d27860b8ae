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

    /// `--check` validates what a start validates: the TLS files exist, parse and make a
    /// TLS context (a key that is not the certificate's is refused), so a config that
    /// passes `--check` starts.
    @Test func checkLoadsTheTLSFilesAStartWouldLoad() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary))
        let ca = TestMesh.cert("mesh-ca")
        let cases: [(tls: String, message: String?)] = [
            ("{ca: \(ca), cert: \(TestMesh.cert("web")), key: \(TestMesh.key("web"))}", nil),
            ("{ca: \(ca), cert: /nonexistent.pem, key: \(TestMesh.key("web"))}", "tls.cert: cannot read certificate"),
            ("{ca: \(ca), cert: \(TestMesh.cert("web")), key: /nonexistent.key}", "tls.key: cannot read private key"),
            (
                "{ca: /nonexistent-ca.pem, cert: \(TestMesh.cert("web")), key: \(TestMesh.key("web"))}",
                "tls.ca: cannot read"
            ),
            (
                "{ca: \(ca), cert: \(TestMesh.cert("web")), key: \(TestMesh.key("orders"))}",
                "tls: certificate and key do not make a TLS context"
            ),
        ]
        for (tls, message) in cases {
            let path = try writeConfig("admin: 127.0.0.1:0\ntls: \(tls)\n")
            defer { try? FileManager.default.removeItem(atPath: path) }
            let result = try await Command.run([Self.binary, "sidecar", "--config", path, "--check"])
            if let message {
                #expect(result.exitCode != 0 && result.output.contains(message), "\(tls): \(result.output)")
            } else {
                #expect(result.exitCode == 0 && result.output.contains("valid"), "\(tls): \(result.output)")
            }
        }
    }

    @Test func sigtermDrainsInFlightRequestsThenExits() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary))
        let app = try await TestMesh.startApp("orders-1")
        do {
            // Listeners on port 0, so no port is borrowed from other tests; the real ports
            // are read from the sidecar's "listening" log lines.
            let path = try writeConfig(
                """
                admin: 127.0.0.1:0
                upstreams: [{listen: "127.0.0.1:0", cluster: orders}]
                clusters: [{name: orders, protocol: http1, endpoints: [127.0.0.1:\(app.port)]}]
                timeouts: {drain: 5s}
                """
            )
            defer { try? FileManager.default.removeItem(atPath: path) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.binary)
            process.arguments = ["sidecar", "--config", path, "--threads", "1", "--log-level", "info"]
            process.standardOutput = FileHandle.nullDevice
            let log = Pipe()
            process.standardError = log
            async let exitCode = Command.wait(for: process)
            defer { if process.isRunning { process.terminate() } }

            var text = ""
            while !(text.contains("listener=admin") && text.contains("listener=upstream:orders")) {
                let data = log.fileHandleForReading.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
            }
            func boundPort(_ listener: String) -> Int? {
                for line in text.split(separator: "\n") where line.contains("listener=\(listener) ") {
                    guard let range = line.range(of: #":(\d+) listener="#, options: .regularExpression) else {
                        continue
                    }
                    return Int(line[range].dropFirst().prefix { $0.isNumber })
                }
                return nil
            }
            let port = try #require(boundPort("upstream:orders"), "\(text)")
            let admin = try #require(boundPort("admin"), "\(text)")
            #expect(try await Curl.get("http://127.0.0.1:\(admin)/ready").status == 200)
            async let inFlight = Curl.get("http://127.0.0.1:\(port)/delay/800")
            for _ in 0..<100 where app.requestCount == 0 {
                try await Task.sleep(for: .milliseconds(10))
            }
            kill(process.processIdentifier, SIGTERM)
            let finished = try await inFlight
            #expect(finished.status == 200)
            #expect(finished.text == "slept 800ms\n")
            #expect(try await exitCode == 0)
        } catch {
            await app.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await app.stop()
    }
}

import Foundation
import Testing

/// A Python server of the fixtures (`shapes_app.py`, `grpc_interop.py server`): it prints
/// its kernel-chosen ports as one JSON line and serves until its stdin closes.
final class FixtureServer {
    private let process: Process
    private let input: Pipe
    let ports: [String: Int]

    private init(process: Process, input: Pipe, ports: [String: Int]) {
        self.process = process
        self.input = input
        self.ports = ports
    }

    func port(_ name: String) -> Int { ports[name] ?? 0 }

    static func start(_ script: String, _ arguments: [String] = []) async throws -> FixtureServer {
        let process = Process()
        let input = Pipe()
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "\(TestMesh.clients)/\(script)"] + arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let line = await Task.detached {
            var data = Data()
            while !data.contains(UInt8(ascii: "\n")) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                data.append(chunk)
            }
            return data
        }.value
        guard let ports = try? JSONDecoder().decode([String: Int].self, from: line) else {
            process.terminate()
            process.waitUntilExit()
            throw FixtureServerFailure(script: script, output: String(decoding: line, as: UTF8.self))
        }
        return FixtureServer(process: process, input: input, ports: ports)
    }

    /// Closes the server's stdin (it exits) and waits for it, bounded (2 s, then SIGTERM).
    func stop() async {
        try? input.fileHandleForWriting.close()
        for _ in 0..<200 where process.isRunning {
            try? await Task.sleep(for: .milliseconds(10))
        }
        if process.isRunning {
            process.terminate()
        }
        process.waitUntilExit()
    }
}

struct FixtureServerFailure: Error, CustomStringConvertible {
    let script: String
    let output: String
    var description: String { "\(script) did not start: \(output)" }
}

/// One listener the matrix calls, and which client calls it.
struct MatrixTarget: Encodable {
    var name: String
    var port: Int
    /// "h1" (HTTP/1.1, keep-alive) or "h2" (HTTP/2 with prior knowledge).
    var caller: String
    var authority = "orders"
}

/// What `shapes_matrix.py` reports.
struct MatrixReport: Decodable {
    struct Failure: Decodable, CustomStringConvertible {
        var target: String
        var `case`: String
        var reason: String
        var seconds: Double
        var description: String { "\(target): \(`case`): \(reason) after \(seconds) s" }
    }

    var cases: Int
    var failures: [Failure]
    var slowest: Double

    /// Runs every status x body x method case against each target, each within
    /// `seconds`.
    static func run(_ targets: [MatrixTarget], seconds: Double = 1) async throws -> MatrixReport {
        let json = String(decoding: try JSONEncoder().encode(targets), as: UTF8.self)
        let result = try await Command.run(
            ["python3", "\(TestMesh.clients)/shapes_matrix.py", json, String(seconds)]
        )
        guard let last = result.output.split(separator: "\n").last,
            let report = try? JSONDecoder().decode(MatrixReport.self, from: Data(last.utf8))
        else {
            Issue.record("shapes_matrix.py failed (\(result.exitCode)): \(result.output)")
            return MatrixReport(cases: 0, failures: [], slowest: 0)
        }
        return report
    }
}

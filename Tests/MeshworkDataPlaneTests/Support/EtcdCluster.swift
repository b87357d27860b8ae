import Foundation

/// A real 3-member etcd cluster from `scripts/etcd-cluster`, in its own directory; stopped
/// (and its data removed) by `stop`.
final class EtcdCluster {
    let directory: String
    let endpoints: [String]
    /// `--store` for a controller: `etcd://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C`.
    var store: String {
        "etcd://" + endpoints.map { $0.replacingOccurrences(of: "http://", with: "") }.joined(separator: ",")
    }

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/etcd-cluster").path

    private init(directory: String, endpoints: [String]) {
        self.directory = directory
        self.endpoints = endpoints
    }

    static func start() async throws -> EtcdCluster {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mw-etcd-\(UUID().uuidString)")
            .path
        let (status, output) = try await run(["start", directory])
        guard status == 0, let last = output.split(separator: "\n").last, last.hasPrefix("http://") else {
            throw EtcdClusterFailure(output: output)
        }
        return EtcdCluster(directory: directory, endpoints: last.split(separator: ",").map(String.init))
    }

    /// SIGKILLs member `n` (1-based).
    func kill(_ n: Int) async throws { _ = try await Self.run(["kill", directory, String(n)]) }

    func stop() async {
        _ = try? await Self.run(["stop", directory])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The script's output goes to a file: the members it leaves running would hold a
    /// pipe open, and a read to its end would never return.
    private static func run(_ arguments: [String]) async throws -> (Int32, String) {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("etcd-cluster-\(UUID()).out").path
        FileManager.default.createFile(atPath: output, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: script)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let handle = FileHandle(forWritingAtPath: output)
        process.standardOutput = handle
        process.standardError = handle
        let status = try await Command.wait(for: process)
        try? handle?.close()
        return (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }
}

struct EtcdClusterFailure: Error, CustomStringConvertible {
    var output: String
    var description: String { "scripts/etcd-cluster start failed: \(output)" }
}

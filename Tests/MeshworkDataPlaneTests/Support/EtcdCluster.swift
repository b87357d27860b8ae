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

    /// The names of the keys under `prefix` (what follows it), read from etcd itself
    /// through its v3 JSON gateway: what the store holds, not what a controller serves.
    func names(_ prefix: String) async throws -> [String] {
        var end = Array(prefix.utf8)
        end[end.count - 1] += 1
        let request =
            [
                "key": Data(prefix.utf8).base64EncodedString(), "range_end": Data(end).base64EncodedString(),
                "keys_only": true,
            ] as [String: Any]
        let body = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        let answer = try await Curl.run(["--data-binary", body, endpoints[endpoints.count - 1] + "/v3/kv/range"])
        guard answer.status == 200, let object = try JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
        else { throw EtcdClusterFailure(output: "range \(prefix): \(answer.status) \(answer.text)") }
        let keys = (object["kvs"] as? [[String: Any]] ?? []).compactMap { $0["key"] as? String }
        return keys.compactMap { Data(base64Encoded: $0).map { String(decoding: $0, as: UTF8.self) } }
            .map { String($0.dropFirst(prefix.count)) }
    }

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

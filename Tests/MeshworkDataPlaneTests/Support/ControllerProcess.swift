import Foundation
import Testing

/// A real `meshwork controller` process on 127.0.0.1 with its own data directory, for
/// end-to-end tests. Its port is read from its log (it listens on port 0).
final class ControllerProcess {
    let dataDirectory: String
    private(set) var process: Process
    private(set) var port = 0
    /// The DNS server's port (UDP and TCP); 0 when it runs none.
    private(set) var dnsPort = 0
    private let logFile: String

    /// Whether the API is served over TLS (the controller's default; tests ask for it with
    /// `defaultTLS` or `--tls`, and get plain HTTP otherwise); clients verify it with `caFile`.
    let tls: Bool
    var url: String { "\(tls ? "https" : "http")://127.0.0.1:\(port)" }
    var caFile: String { dataDirectory + "/ca.pem" }
    var token: String {
        (try? String(contentsOfFile: dataDirectory + "/token", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    }
    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    private let extraArguments: [String]

    private init(dataDirectory: String, extraArguments: [String], tls: Bool) {
        self.dataDirectory = dataDirectory
        self.extraArguments = extraArguments
        self.tls = tls || extraArguments.contains("--tls")
        self.logFile = dataDirectory + ".log"
        self.process = Process()
    }

    /// `defaultTLS`: start it without any TLS flag (its default, TLS); otherwise with
    /// `--no-tls` unless the arguments say `--tls`.
    static func start(
        dataDirectory: String? = nil,
        _ extraArguments: [String] = [],
        defaultTLS: Bool = false
    ) async throws -> ControllerProcess {
        let directory =
            dataDirectory
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("mw-ctl-\(UUID().uuidString)").path
        let controller = ControllerProcess(dataDirectory: directory, extraArguments: extraArguments, tls: defaultTLS)
        try await controller.launch()
        return controller
    }

    private func launch(port requested: Int = 0) async throws {
        _ = FileManager.default.createFile(atPath: logFile, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments =
            ["controller", "--data-dir", dataDirectory, "--listen", "127.0.0.1:\(requested)"]
            + (extraArguments.contains("--dns") ? [] : ["--dns", "127.0.0.1:0"]) + (tls ? [] : ["--no-tls"])
            + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: logFile)
        try process.run()
        // A restarted process logs to the same file: only its own lines count.
        let skip = log.count
        for _ in 0..<300 {
            let own = String(log.dropFirst(skip))
            if let port = Self.port(in: own) {
                self.port = port
                dnsPort = Self.port(in: own, listener: "dns") ?? 0
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.terminate()
        throw ControllerStartFailure(log: log)
    }

    static func port(in log: String, listener: String = "api") -> Int? {
        for line in log.split(separator: "\n")
        where line.contains("listener=\(listener) ") || line.hasSuffix("listener=\(listener)")
            || line.contains("listener=\(listener) [")
        {
            guard let range = line.range(of: #":(\d+) listener="#, options: .regularExpression) else { continue }
            return Int(line[range].dropFirst().prefix { $0.isNumber })
        }
        return nil
    }

    /// Stops it (SIGTERM, or SIGKILL when `kill`), waiting for the process to end.
    func stop(kill: Bool = false) async {
        await Self.stop(process, kill: kill, waitSteps: 1500)
    }

    /// Signals `process` and waits up to `waitSteps` x 10 ms for it to end.
    static func stop(_ process: Process, kill: Bool, waitSteps: Int) async {
        defer { Command.release(process) }
        guard process.isRunning else { return }
        if kill {
            Foundation.kill(process.processIdentifier, SIGKILL)
        } else {
            process.terminate()
        }
        for _ in 0..<waitSteps where process.isRunning {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Starts it again on the same data directory: on a new port, or with `samePort` on the
    /// one it had (its own port, just released, so sidecars that know it reconnect).
    func restart(samePort: Bool = false) async throws {
        try await launch(port: samePort ? port : 0)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: logFile)
    }

    /// curl against the API, with the operator token unless `authorized` is false or
    /// another `bearer` is given.
    func call(
        _ method: String,
        _ path: String,
        body: String? = nil,
        authorized: Bool = true,
        bearer: String? = nil
    ) async throws -> CurlResult {
        var arguments = ["-X", method]
        if tls { arguments += ["--cacert", caFile] }
        if let bearer {
            arguments += ["-H", "Authorization: Bearer \(bearer)"]
        } else if authorized {
            arguments += ["-H", "Authorization: Bearer \(token)"]
        }
        if let body { arguments += ["-H", "content-type: application/json", "--data-binary", body] }
        return try await Curl.run(arguments + [url + path])
    }
}

extension ControllerProcess {
    /// `meshwork ctl apply -f` with `yaml`, as an operator applies resources.
    func apply(_ yaml: String) async throws -> (exitCode: Int32, output: String) {
        let file = dataDirectory + "-apply-\(UUID().uuidString.prefix(8)).yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        return try await Command.run([
            CLITests.binary, "ctl", "apply", "--controller", url, "--token-file", dataDirectory + "/token", "-f", file,
        ])
    }

    /// A join token for `service` from the API.
    func joinToken(_ service: String, ttl: String = "1h", uses: Int = 1) async throws -> String {
        let result = try await call(
            "POST",
            "/v1/tokens",
            body: #"{"service": "\#(service)", "ttl": "\#(ttl)", "uses": \#(uses)}"#
        )
        let object = try JSONSerialization.jsonObject(with: result.body) as? [String: Any]
        return try #require(object?["token"] as? String, "no token in \(result.text)")
    }

    /// A join token written to a file next to the data directory (what sidecars read).
    func joinTokenFile(_ service: String, uses: Int = 1) async throws -> String {
        let file = dataDirectory + "-\(service)-\(UUID().uuidString.prefix(8)).token"
        try (try await joinToken(service, uses: uses) + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    /// A workload certificate for `service`, as a sidecar gets one (openssl makes the key
    /// and CSR; a join token pays for it): PEM files in `directory`, and the credential.
    func issueWorkload(
        _ service: String,
        in directory: String,
        instance: String? = nil
    ) async throws -> (certificate: String, key: String, credential: String) {
        let key = directory + "/\(service).key"
        let csr = directory + "/\(service).csr"
        let made = try await Command.run([
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=workload",
        ])
        try #require(made.exitCode == 0, "\(made.output)")
        var fields = ["csr": try String(contentsOfFile: csr, encoding: .utf8), "token": try await joinToken(service)]
        if let instance { fields["instance"] = instance }
        let body = try JSONSerialization.data(withJSONObject: fields)
        let issued = try await call(
            "POST",
            "/v1/certificates",
            body: String(decoding: body, as: UTF8.self),
            authorized: false
        )
        let answer = try #require(try JSONSerialization.jsonObject(with: issued.body) as? [String: Any])
        let certificate = directory + "/\(service).pem"
        try #require(answer["certificate"] as? String, "\(issued.text)")
            .write(toFile: certificate, atomically: true, encoding: .utf8)
        return (certificate, key, try #require(answer["credential"] as? String))
    }

    /// The value of one sample of the controller's /metrics (0 when absent).
    func metric(_ sample: String) async throws -> Double {
        let text = try await call("GET", "/metrics", authorized: false).text
        for line in text.split(separator: "\n") where line.hasPrefix(sample + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }
}

struct ControllerStartFailure: Error, CustomStringConvertible {
    let log: String
    var description: String { "controller did not start:\n\(log)" }
}

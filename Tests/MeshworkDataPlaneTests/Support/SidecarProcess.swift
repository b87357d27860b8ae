import Foundation
import MeshworkDemo
import Testing

/// A real `meshwork sidecar` process started with flags; its listeners' ports are read
/// from its log (everything listens on port 0).
final class SidecarProcess {
    let process = Process()
    let logFile: String
    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    private init(logFile: String) {
        self.logFile = logFile
    }

    static func start(
        _ arguments: [String],
        waitFor listeners: [String],
        command: String = "sidecar"
    ) async throws -> SidecarProcess {
        let logFile = FileManager.default.temporaryDirectory.appendingPathComponent("mw-sc-\(UUID().uuidString).log")
            .path
        _ = FileManager.default.createFile(atPath: logFile, contents: nil)
        let sidecar = SidecarProcess(logFile: logFile)
        sidecar.process.executableURL = URL(fileURLWithPath: CLITests.binary)
        sidecar.process.arguments = [command, "--threads", "1"] + arguments
        sidecar.process.standardOutput = FileHandle.nullDevice
        sidecar.process.standardError = FileHandle(forWritingAtPath: logFile)
        try sidecar.process.run()
        for _ in 0..<300 {
            if listeners.allSatisfy({ sidecar.port($0) != nil }) { return sidecar }
            if !sidecar.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        sidecar.process.terminate()
        throw ControllerStartFailure(log: sidecar.log)
    }

    /// Waits (bounded: 10 s) until the log contains `text`; false when it never did.
    func waitForLog(_ text: String, seconds: Int = 10) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if log.contains(text) { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return log.contains(text)
    }

    /// How often `text` is in the log so far.
    func logCount(_ text: String) -> Int {
        log.components(separatedBy: text).count - 1
    }

    /// Waits (bounded) until `text` is in the log more than `count` times: a line that
    /// comes after something the test did, where the same line may have come before.
    func waitForLog(_ text: String, beyond count: Int, seconds: Int = 10) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if logCount(text) > count { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return logCount(text) > count
    }

    func port(_ listener: String) -> Int? {
        ControllerProcess.port(in: log, listener: listener)
    }

    /// Sends a signal (SIGHUP: the gateway reloads its config).
    func signal(_ number: Int32) {
        kill(process.processIdentifier, number)
    }

    func stop(kill: Bool = false) async {
        await ControllerProcess.stop(process, kill: kill, waitSteps: 1000)
        try? FileManager.default.removeItem(atPath: logFile)
    }
}

/// A sidecar beside `app` for `service`, joined with a fresh join token (3 s lease), once
/// it has registered.
func startServer(
    _ service: String,
    app: DemoApp,
    controller: ControllerProcess,
    extra: [String] = []
) async throws -> SidecarProcess {
    let sidecar = try await SidecarProcess.start(
        [
            "--service", service, "--app-port", String(app.port), "--controller", controller.url,
            "--join-token-file", try await controller.joinTokenFile(service), "--ttl", "3s",
        ] + extra,
        waitFor: ["inbound", "admin"]
    )
    #expect(try await sidecar.waitForLog("registered"), "\(sidecar.log)")
    return sidecar
}

/// A client-only sidecar for `service` (no app behind it) joined with a fresh token, with an
/// upstream port for `upstream`.
func startClient(
    _ service: String,
    calling upstream: String,
    controller: ControllerProcess,
    extra: [String] = []
) async throws -> SidecarProcess {
    try await SidecarProcess.start(
        [
            "--service", service, "--controller", controller.url, "--upstream", "\(upstream)=127.0.0.1:0",
            "--join-token-file", try await controller.joinTokenFile(service),
        ] + extra,
        waitFor: ["upstream:\(upstream)"]
    )
}

extension SidecarProcess {
    /// The local port that reaches `upstream`, as a URL.
    func upstreamURL(_ upstream: String) -> String {
        "http://127.0.0.1:\(port("upstream:\(upstream)") ?? 0)"
    }

    /// One sample of the admin `/metrics` (`name{labels}` exactly as exposed); 0 when absent.
    func metric(_ series: String) async throws -> Double {
        let text = try await Curl.get("http://127.0.0.1:\(port("admin") ?? 0)/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    /// Bounded (10 s): until discovery and certificates let a GET through to `upstream`.
    func waitUntilServing(_ upstream: String) async throws -> Bool {
        for _ in 0..<100 {
            if try await Curl.get(upstreamURL(upstream) + "/").status == 200 { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}

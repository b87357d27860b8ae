import ArgumentParser
import Foundation
import Logging
import UnixSignals

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The whole mesh on this machine: controller, three services, sidecars, gateway, load.",
        discussion: """
            Starts, in this one process and on 127.0.0.1 only: a controller (registry, CA, DNS), an \
            application of three services (web -> orders -> inventory; 2, 5 and 2 instances of the \
            built-in demo server; orders-4 and orders-5 are its next versions), a sidecar beside each \
            instance (join tokens, mTLS, health checks), \
            a gateway in front of web, and a steady load through the gateway. Every second it shows \
            each service's request rate, success rate and p50/p99 latency. Partway through, one \
            orders instance turns slow and one inventory instance starts failing: watch the mesh \
            route around them. Then orders v2 is rolled out and promoted by its own figures, and a \
            bad v3 is rolled back by its first analysis. Ctrl-C (or --duration) stops everything and \
            removes its files.
            """
    )

    @Option(name: .long, help: "Stop after this many seconds (0: run until Ctrl-C).")
    var duration: Int = 0

    @Option(name: .long, help: "Requests per second sent through the gateway.")
    var rate: Int = 40

    @Option(name: .long, help: "The gateway's public port on 127.0.0.1 (0 picks a free one).")
    var port: Int = 8080

    @Option(name: .long, help: "Seconds before the faults start (default: a third of --duration, else 15).")
    var faultsAfter: Int?

    @Option(name: .long, help: "Where the demo keeps its state and log (default: a new temporary directory).")
    var dataDir: String?

    @Flag(name: .long, help: "Print each view below the last instead of redrawing the screen.")
    var plain = false

    @Flag(
        name: .long,
        help: """
            Run the control plane as three controllers on a 3-member etcd (etcd on PATH: Debian's \
            etcd-server), and SIGKILL the leader partway: another leads, and no request fails.
            """
    )
    var ha = false

    func validate() throws {
        guard duration >= 0 else { throw ValidationError("--duration must be 0 or more") }
        guard (1...5000).contains(rate) else { throw ValidationError("--rate must be between 1 and 5000") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
    }

    func run() async throws {
        let directory =
            dataDir ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("meshwork-demo-\(getpid())")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let logFile = (directory as NSString).appendingPathComponent("demo.log")
        guard FileManager.default.createFile(atPath: logFile, contents: nil),
            let logHandle = FileHandle(forWritingAtPath: logFile)
        else { throw CommandFailure("cannot write \(logFile)") }
        LoggingSystem.bootstrap { label in FileLogHandler(handle: logHandle, label: label) }
        let faultsAt = faultsAfter ?? (duration > 0 ? max(3, duration / 3) : 15)
        let mesh = DemoMesh(directory: directory, gatewayPort: port, rate: rate, ha: ha)
        sayLine("meshwork demo: starting (log: \(logFile))")
        do {
            try await mesh.start()
        } catch {
            await mesh.stop()
            throw CommandFailure("the demo could not start: \(error)")
        }
        sayLine(await mesh.describe())
        let view = DemoView(mesh: mesh, redraw: !plain && isatty(STDOUT_FILENO) == 1)
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await mesh.runLoad() }
            group.addTask {
                await view.run(faultsAt: faultsAt, duration: duration)
            }
            group.addTask {
                for await _ in signals { return }
            }
            // The first to end (time is up, or a signal) ends the demo.
            await group.next()
            group.cancelAll()
        }
        sayLine("\nmeshwork demo: stopping")
        await view.printSummary()
        await mesh.stop()
        if dataDir == nil { try? FileManager.default.removeItem(atPath: directory) }
        sayLine("meshwork demo: stopped; nothing left running")
    }
}

/// The demo's log lines go to a file: the terminal is the live view's.
struct FileLogHandler: LogHandler {
    let handle: FileHandle
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(handle: FileHandle, label: String) {
        self.handle = handle
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(
        level: Logger.Level,
        message: Logger.Message,
        metadata explicit: Logger.Metadata?,
        source: String,
        file: String,
        function: String,
        line: UInt
    ) {
        let merged = metadata.merging(explicit ?? [:]) { $1 }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text = "\(Date()) \(level) \(label): \(fields.isEmpty ? "" : fields + " ")\(message)\n"
        handle.write(Data(text.utf8))
    }
}

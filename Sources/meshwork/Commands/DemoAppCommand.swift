import ArgumentParser
import MeshworkDemo
import MeshworkModel
import NIOCore
import NIOPosix
import ServiceLifecycle

struct DemoAppCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-app",
        abstract: "Run the built-in demo app (HTTP/1.1 and h2c), a fast upstream for trying the mesh.",
        discussion: """
            Paths: / hello, /echo streams the body back, /status/<code>, /delay/<ms>, /bytes/<n>,
            /headers shows the request head, /trailers answers with trailers, /close closes after answering.
            """
    )

    @Option(name: .long, help: "Address to listen on.")
    var listen: String = "127.0.0.1:8080"

    @Option(name: .long, help: "Name the app answers with (x-served-by).")
    var name: String = "demo"

    @Option(name: .long, help: "Milliseconds added before every answer (a slow instance).")
    var delayMs: Int = 0

    @Option(name: .long, help: "Event loop threads.")
    var threads: Int = 1

    func run() async throws {
        guard case .success(let address) = HostPort.parse(listen) else {
            throw ValidationError("--listen: expected host:port, found \"\(listen)\"")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        let app = try await DemoApp.start(
            name: name,
            host: address.host,
            port: address.port,
            responseDelay: .milliseconds(Int64(max(0, delayMs))),
            group: group
        )
        print("demo app \(name) listening on \(address.host):\(app.port)")
        await withGracefulShutdownHandler {
            try? await Task.sleep(for: .seconds(365 * 24 * 3600))
        } onGracefulShutdown: {
        }
        await app.stop()
    }
}

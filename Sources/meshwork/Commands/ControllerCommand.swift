import ArgumentParser
import Foundation
import Logging
import MeshworkController
import MeshworkModel
import ServiceLifecycle
import UnixSignals

struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract: "Run the controller: the registry, its API and watch streams.",
        discussion: """
            Starts with no arguments: the registry is kept in SQLite under the data directory, the API \
            listens on 127.0.0.1:7070, and changes need the bearer token in <data-dir>/token (created on \
            first start) or in --token-file. SIGTERM or SIGINT stops it.
            """
    )

    @Option(
        name: .long,
        help: "Where the registry is stored (default: $XDG_STATE_HOME/meshwork or ~/.local/state/meshwork)."
    )
    var dataDir: String?

    @Option(name: .long, help: "API listen address (port 0 picks a free port).")
    var listen: String = "127.0.0.1:7070"

    @Option(
        name: .long,
        help: "File holding the API token for changes (default: <data-dir>/token, created if missing)."
    )
    var tokenFile: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let address: HostPort
        switch HostPort.parse(listen) {
        case .success(let value): address = value
        case .failure(let error): throw CommandFailure("--listen: \(error.reason)")
        }
        let dataDirectory = dataDir ?? ControllerServer.defaultDataDirectory
        let token: (token: String, path: String)
        do {
            token = try ControllerServer.loadToken(path: tokenFile, dataDirectory: dataDirectory)
        } catch {
            throw CommandFailure("\(error)")
        }
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "meshwork.controller")
        logger.info("starting", metadata: ["data-dir": "\(dataDirectory)", "token-file": "\(token.path)"])
        let server: ControllerServer
        do {
            server = try ControllerServer(
                options: .init(dataDirectory: dataDirectory, listen: address, token: token.token),
                logger: logger
            )
        } catch {
            throw CommandFailure("cannot open the registry in \(dataDirectory): \(error)")
        }
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await serviceGroup.run()
    }
}

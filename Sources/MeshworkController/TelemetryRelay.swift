import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import SwiftASN1
import Synchronization
import X509

/// With several controllers, telemetry has one home: the leader, which analyses rollouts
/// from it. A follower relays each report a sidecar sends it to the leader (its API URL is
/// in the store, under the leader's election lease), and answers telemetry reads
/// (`/v1/stats`, `/v1/edges`) with the leader's, so every controller's dashboard and
/// `ctl stat` show the whole mesh. When the leader cannot be reached the follower keeps the
/// report (and answers) itself: a degraded view, never a lost report or a failed call.
///
/// The relayed call carries the sidecar's own `Authorization` (credentials are shared in
/// the store, so the leader checks it again) and `x-meshwork-relayed`, which a controller
/// never relays again (no loop while leadership moves). The leader is verified with the
/// mesh CA (its API certificate is issued from it).
final class TelemetryRelay: Sendable {
    static let header = HTTPField.Name("x-meshwork-relayed")!
    static let timeout: Duration = .seconds(2)

    private let client: Mutex<HTTPClient>
    private let logger: Logger
    private let name: String

    init(roots: [Certificate], name: String, logger: Logger) throws {
        self.client = Mutex(try Self.client(roots))
        self.name = name
        self.logger = logger
    }

    private static func client(_ roots: [Certificate]) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(
            try roots.map { certificate in
                var serializer = DER.Serializer()
                try serializer.serialize(certificate)
                return try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
            }
        )
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(1), read: .seconds(2))
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// A CA rotation step: the leader's next certificate may come from another root.
    func trust(_ roots: [Certificate]) {
        guard let fresh = try? Self.client(roots) else { return }
        let old = client.withLock { client in
            defer { client = fresh }
            return client
        }
        Task { try? await old.shutdown() }
    }

    func shutdown() async {
        try? await client.withLock { $0 }.shutdown()
    }

    /// Whether `request` came relayed (it is then never relayed again).
    static func relayed(_ request: Request) -> Bool { request.headers[header] != nil }

    /// Sends `body` to `leader` + `path` as `method`; the answer when the leader gave one
    /// with `expected` status, nil otherwise (the caller serves it itself).
    func relay(
        _ method: HTTPMethod,
        to leader: String,
        path: String,
        authorization: String?,
        body: ByteBuffer?,
        expected: HTTPResponseStatus
    ) async -> ByteBuffer? {
        var request = HTTPClientRequest(url: leader + path)
        request.method = method
        if let authorization { request.headers.add(name: "authorization", value: authorization) }
        request.headers.add(name: Self.header.rawName, value: name)
        if let body {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(body)
        }
        let http = client.withLock { $0 }
        do {
            let response = try await http.execute(request, timeout: .init(Self.timeout))
            let answer = try await response.body.collect(upTo: 16 << 20)
            guard response.status == expected else {
                logger.debug(
                    "the leader refused a relayed call",
                    metadata: ["path": "\(path)", "status": "\(response.status.code)"]
                )
                return nil
            }
            return answer
        } catch {
            logger.debug("the leader did not answer a relayed call", metadata: ["error": "\(error)"])
            return nil
        }
    }
}

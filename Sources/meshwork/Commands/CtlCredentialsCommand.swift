import ArgumentParser
import Foundation
import NIOHTTP1

/// `meshwork ctl credentials revoke|list`: revoke every workload certificate issued under
/// an instance, a service or a join token (docs/security.md, "Revocation").
struct CtlCredentials: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credentials",
        abstract: "Revoke workload certificates and sidecar credentials; list what is revoked.",
        subcommands: [Revoke.self, List.self]
    )

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke the certificates and credentials of an instance, a service or a join token.",
            discussion: """
                Their credentials stop working at once (no registration, heartbeat or telemetry), renewals \
                are refused, and every sidecar refuses the certificates at its next handshake (pooled \
                connections are replaced). A revoked sidecar joins again only with a new join token.
                """
        )
        @OptionGroup var options: CtlOptions
        @Option(name: .long, help: "An instance id.") var instance: String?
        @Option(name: .long, help: "A service: every instance of it.") var service: String?
        @Option(name: .long, help: "A join token id: what joined with it (the token is deleted).") var token: String?

        func run() async throws {
            let given = [("instance", instance), ("service", service), ("token", token)].compactMap { name, value in
                value.map { (name, $0) }
            }
            guard given.count == 1, let (scope, value) = given.first else {
                throw CommandFailure("give exactly one of --instance, --service or --token")
            }
            let body = String(decoding: try JSONSerialization.data(withJSONObject: [scope: value]), as: UTF8.self)
            let data = try await options.call(.POST, "/v1/revocations", body: body)
            let answer = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
            let serials = answer["revoked"] as? [String] ?? []
            print("\(scope) \(value): \(serials.count) certificate(s) revoked")
            for serial in serials { print("  \(serial)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The serials of revoked certificates not expired yet."
        )
        @OptionGroup var options: CtlOptions

        func run() async throws {
            let data = try await options.call(.GET, "/v1/revocations")
            let answer = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
            for serial in answer["revoked"] as? [String] ?? [] { print(serial) }
        }
    }
}

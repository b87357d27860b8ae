import ArgumentParser
import Foundation
import MeshworkModel
import NIOHTTP1

/// `meshwork ctl token create|list|delete`: join tokens, each scoped to one service, that
/// new sidecars trade for their first certificate.
struct CtlToken: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Join tokens for sidecars and scoped operator tokens: create, list, delete.",
        subcommands: [Create.self, List.self, Delete.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a join token for one service and print it.",
            discussion: """
                Give it to a sidecar of that service (--join-token-file or $MESHWORK_JOIN_TOKEN): it sends a CSR \
                with it and gets the certificate of spiffe://<trust-domain>/service/<service>.
                """
        )
        @OptionGroup var options: CtlOptions
        @Option(name: .long, help: "The service a join token is for.") var service: String?
        @Option(name: .long, help: "How long the token can be used (default: 1h for join, 720h for operator).")
        var ttl: String?
        @Option(name: .long, help: "How many sidecars may join with it.") var uses: Int = 1
        @Option(name: .long, help: "Create an operator token with this scope instead: read or write.")
        var `operator`: String?

        func run() async throws {
            var fields: [String: Any]
            if let scope = `operator` {
                fields = ["kind": "operator", "scope": scope]
            } else {
                guard let service else { throw CommandFailure("--service is required for a join token") }
                fields = ["service": service, "uses": uses]
            }
            if let ttl { fields["ttl"] = ttl }
            let body = try String(decoding: JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
            let data = try await options.call(.POST, "/v1/tokens", body: body)
            if options.output == .table {
                let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
                print(Table.string(object["token"]))
            } else {
                try options.print(data) { _ in [] }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List join tokens (without their secrets).")
        @OptionGroup var options: CtlOptions

        func run() async throws {
            let data = try await options.call(.GET, "/v1/tokens")
            try options.print(data) { object in
                var rows = [["ID", "KIND", "SERVICE", "SCOPE", "USES LEFT", "EXPIRES"]]
                for token in object as? [[String: Any]] ?? [] {
                    rows.append([
                        Table.string(token["id"]), Table.string(token["kind"]), Table.string(token["service"]),
                        Table.string(token["scope"]), Table.string(token["usesLeft"]), Table.string(token["expires"]),
                    ])
                }
                return rows
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a join token.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The token's id (the part before the dot).") var id: String

        func run() async throws {
            _ = try await options.call(.DELETE, "/v1/tokens/\(id)")
            print("token \(id) deleted")
        }
    }
}

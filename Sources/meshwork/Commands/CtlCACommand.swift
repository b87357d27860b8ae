import ArgumentParser
import Foundation
import MeshworkModel
import NIOHTTP1

/// `meshwork ctl ca status|rotate|activate|finish`: the mesh CA and its rotation, one safe
/// step at a time (the new root is trusted everywhere before it signs, and the old one is
/// trusted until what it signed has expired).
struct CtlCA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The mesh CA: status, and rotation (rotate, activate, finish).",
        subcommands: [Status.self, Rotate.self, Activate.self, Finish.self]
    )

    static func show(_ data: Data, options: CtlOptions) throws {
        if options.output != .table {
            try options.print(data) { _ in [] }
            return
        }
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
        var rows = [["ROLE", "FINGERPRINT", "NOT AFTER", "RETIRE AFTER"]]
        func row(_ role: String, _ root: Any?) {
            guard let root = root as? [String: Any] else { return }
            rows.append([
                role, String(Table.string(root["fingerprint"]).prefix(16)), Table.string(root["notAfter"]),
                Table.string(root["retireAfter"]),
            ])
        }
        row("active", object["active"])
        row("next", object["next"])
        for root in object["retiring"] as? [Any] ?? [] { row("retiring", root) }
        print("trust domain: \(Table.string(object["trustDomain"]))")
        print(Table.render(rows), terminator: "")
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The active root and any rotation in progress.")
        @OptionGroup var options: CtlOptions

        func run() async throws {
            try CtlCA.show(try await options.call(.GET, "/v1/ca"), options: options)
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Step 1: a new root joins every sidecar's trust bundle (the old one still signs).",
            discussion: "Then, once sidecars have it (seconds), `ctl ca activate`."
        )
        @OptionGroup var options: CtlOptions
        @Option(name: .long, help: "PEM file: the new signing certificate, then its issuers up to the root.")
        var cert: String?
        @Option(name: .long, help: "PEM file: the key of --cert.") var key: String?

        func run() async throws {
            var body: [String: Any] = ["step": "prepare"]
            switch (cert, key) {
            case (nil, nil): break
            case (let cert?, let key?):
                guard let certificate = try? String(contentsOfFile: cert, encoding: .utf8) else {
                    throw CommandFailure("--cert: cannot read \(cert)")
                }
                guard let keyText = try? String(contentsOfFile: key, encoding: .utf8) else {
                    throw CommandFailure("--key: cannot read \(key)")
                }
                body["certificate"] = certificate
                body["key"] = keyText
            default:
                throw CommandFailure("--cert and --key go together")
            }
            let text = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
            try CtlCA.show(try await options.call(.POST, "/v1/ca/rotate", body: text), options: options)
        }
    }

    struct Activate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Step 2: the new root signs; every sidecar renews at once."
        )
        @OptionGroup var options: CtlOptions

        func run() async throws {
            try CtlCA.show(
                try await options.call(.POST, "/v1/ca/rotate", body: #"{"step": "activate"}"#),
                options: options
            )
        }
    }

    struct Finish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Step 3: the old root leaves the trust bundle (once what it signed has expired)."
        )
        @OptionGroup var options: CtlOptions
        @Flag(name: .long, help: "Drop the old root now, even if certificates it signed may still be valid.")
        var force = false

        func run() async throws {
            try CtlCA.show(
                try await options.call(.POST, "/v1/ca/rotate", body: #"{"step": "finish", "force": \#(force)}"#),
                options: options
            )
        }
    }
}

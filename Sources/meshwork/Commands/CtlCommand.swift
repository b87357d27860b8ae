import ArgumentParser
import AsyncHTTPClient
import Foundation
import MeshworkController
import MeshworkDiscovery
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Yams

/// `meshwork ctl`: the operator's CLI over the controller API.
struct CtlCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Look at and change the registry: services, instances, apply, delete, watch, join tokens.",
        discussion: """
            The controller is --controller, else $MESHWORK_CONTROLLER, else https://127.0.0.1:7070. The token \
            (for changes) is --token-file, else $MESHWORK_TOKEN, else the local controller's token file.
            """,
        subcommands: [
            CtlServices.self, CtlInstances.self, CtlDescribe.self, CtlApply.self, CtlDelete.self, CtlWatch.self,
            CtlToken.self, CtlCredentials.self, CtlPolicies.self, CtlRoutes.self, CtlCA.self, CtlStat.self,
            CtlEdges.self, CtlTap.self,
            CtlTop.self, CtlRollout.self,
        ]
    )
}

struct CtlOptions: ParsableArguments {
    @Option(name: .long, help: "The controller's API URL; several, comma-separated, are tried in turn.")
    var controller: String?

    @Option(name: .long, help: "File holding the API token.")
    var tokenFile: String?

    @Option(name: .long, help: "PEM roots that verify an https:// controller.")
    var caFile: String?

    @Option(name: .shortAndLong, help: "Output: table, json or yaml.")
    var output: OutputFormat = .table

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case table, json, yaml
    }

    var baseURL: String {
        let url = controller ?? ProcessInfo.processInfo.environment["MESHWORK_CONTROLLER"] ?? "https://127.0.0.1:7070"
        return url.hasSuffix("/") ? String(url.dropLast()) : url
    }

    func token() throws -> String? {
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw CommandFailure("cannot read --token-file \(tokenFile)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if let token = ProcessInfo.processInfo.environment["MESHWORK_TOKEN"], !token.isEmpty { return token }
        let local = (ControllerServer.defaultDataDirectory as NSString).appendingPathComponent("token")
        return (try? String(contentsOfFile: local, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The controller link: for an https:// controller it verifies the API certificate
    /// with `--ca-file`, else `$MESHWORK_CA`, else the local controller's
    /// `<data-dir>/ca.pem`.
    func makeLink() throws -> HTTPControllerClient {
        var roots: [NIOSSLCertificate]?
        if baseURL.hasPrefix("https://") {
            let local = (ControllerServer.defaultDataDirectory as NSString).appendingPathComponent("ca.pem")
            let file = caFile ?? ProcessInfo.processInfo.environment["MESHWORK_CA"]
            if let path = file ?? (FileManager.default.fileExists(atPath: local) ? local : nil) {
                guard let certificates = try? NIOSSLCertificate.fromPEMFile(path), !certificates.isEmpty else {
                    throw CommandFailure("cannot read the CA file \(path)")
                }
                roots = certificates
            }
        }
        return HTTPControllerClient(
            baseURL: baseURL,
            token: try token(),
            roots: roots,
            group: MultiThreadedEventLoopGroup.singleton,
            timeouts: .init(connect: .seconds(3))
        )
    }

    /// Calls the API; a refusal becomes a clear error with the controller's reasons.
    func call(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> Data {
        let link = try makeLink()
        let answer: (status: HTTPResponseStatus, body: ByteBuffer)
        do {
            answer = try await link.call(method, path, body: body, contentType: "application/yaml", limit: 64 << 20)
        } catch {
            await link.shutdown()
            throw CommandFailure("cannot reach the controller at \(baseURL): \(error)")
        }
        await link.shutdown()
        let data = Data(answer.body.readableBytesView)
        guard answer.status == .ok else {
            throw CommandFailure(Self.describeRefusal(status: answer.status, data: data))
        }
        return data
    }

    /// Follows a streaming answer line by line (`HTTPControllerClient.streamLines`), with
    /// the controller's refusal or unreachability as a clear error.
    func stream(_ path: String, onLine: (String) async throws -> Void) async throws {
        /// What the caller's `onLine` threw: passed on as it is.
        struct Caller: Error { let error: any Error }
        let link = try makeLink()
        defer { Task { await link.shutdown() } }
        do {
            try await link.streamLines(path) { line in
                do { try await onLine(line) } catch { throw Caller(error: error) }
            }
        } catch let caller as Caller {
            throw caller.error
        } catch let error as ControllerClientError where error.status != nil {
            throw CommandFailure(
                Self.describeRefusal(
                    status: HTTPResponseStatus(statusCode: error.status ?? 500),
                    data: Data(error.body)
                )
            )
        } catch {
            throw CommandFailure("cannot reach the controller at \(baseURL): \(error)")
        }
    }

    static func describeRefusal(status: HTTPResponseStatus, data: Data) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return "the controller answered \(status.code) \(status.reasonPhrase)"
        }
        var text = "\(status.code) \(object["error"] as? String ?? status.reasonPhrase)"
        for error in object["errors"] as? [[String: String]] ?? [] {
            text += "\n  - \(error["field"] ?? ""): \(error["reason"] ?? "")"
        }
        return text
    }

    /// Prints `data` (a JSON document) as asked; `table` renders `rows` from it.
    func print(_ data: Data, table: (Any) -> [[String]]) throws {
        switch output {
        case .json:
            Swift.print(String(decoding: data, as: UTF8.self), terminator: "")
        case .yaml:
            let object = try JSONSerialization.jsonObject(with: data)
            Swift.print(try Yams.dump(object: object), terminator: "")
        case .table:
            let rows = table(try JSONSerialization.jsonObject(with: data))
            Swift.print(Table.render(rows), terminator: "")
        }
    }
}

enum Table {
    static func render(_ rows: [[String]]) -> String {
        guard let header = rows.first else { return "" }
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        return rows.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    static func string(_ value: Any?) -> String {
        switch value {
        case let text as String: return text
        case let number as NSNumber: return number.stringValue
        case nil: return "-"
        default: return "\(value!)"
        }
    }
}

struct CtlPolicies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policies",
        abstract: "List authorization policies and the mesh default."
    )
    @OptionGroup var options: CtlOptions

    func run() async throws {
        let data = try await options.call(.GET, "/v1/policies")
        if options.output == .table {
            let mesh = try JSONSerialization.jsonObject(with: try await options.call(.GET, "/v1/mesh"))
            Swift.print("mesh default: \(Table.string((mesh as? [String: Any])?["defaultAuthorization"]))")
            if (mesh as? [String: Any])?["requireMTLS"] as? Bool == true { Swift.print("mesh requires mTLS") }
        }
        try options.print(data) { object in
            func list(_ value: Any?) -> String {
                let items = (value as? [Any] ?? []).map { Table.string($0) }
                return items.isEmpty ? "*" : items.joined(separator: ",")
            }
            return [["NAME", "TARGET", "ACTION", "FROM", "PATHS", "METHODS", "PORTS"]]
                + (object as? [[String: Any]] ?? []).map { policy in
                    [
                        Table.string(policy["name"]), Table.string(policy["target"]), Table.string(policy["action"]),
                        list(policy["from"]), list(policy["paths"]), list(policy["methods"]), list(policy["ports"]),
                    ]
                }
        }
    }
}

struct CtlRoutes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "routes",
        abstract: "List routes: their parents, rules and backends (with weights)."
    )
    @OptionGroup var options: CtlOptions

    func run() async throws {
        let data = try await options.call(.GET, "/v1/routes")
        try options.print(data) { object in
            [["NAME", "KIND", "PARENTS", "STATUS", "RULE", "BACKENDS"]]
                + (object as? [[String: Any]] ?? []).flatMap { route -> [[String]] in
                    let parents = (route["parentRefs"] as? [[String: Any]] ?? []).map { parent in
                        // A gateway parent: `gateway/edge` or `gateway/edge:public` (its listener).
                        guard parent["kind"] as? String == "Gateway" else { return Table.string(parent["name"]) }
                        let listener = (parent["sectionName"] as? String).map { ":" + $0 } ?? ""
                        return "gateway/\(Table.string(parent["name"]))\(listener)"
                    }
                    // What is wrong, by its reason (`ctl describe route` has the messages).
                    let conditions = (route["status"] as? [String: Any])?["conditions"] as? [[String: Any]] ?? []
                    let problems = conditions.compactMap { condition -> String? in
                        let holds = condition["status"] as? String == "True"
                        let bad = condition["type"] as? String == "Conflicted" ? holds : !holds
                        return bad ? condition["reason"] as? String : nil
                    }
                    let status = problems.isEmpty ? "Accepted" : problems.joined(separator: ",")
                    let rules = route["rules"] as? [[String: Any]] ?? []
                    return rules.enumerated().map { index, rule in
                        let backends = (rule["backendRefs"] as? [[String: Any]] ?? []).map { backend in
                            let subset = (backend["version"] as? String).map { "@" + $0 } ?? ""
                            return "\(Table.string(backend["name"]))\(subset):\(Table.string(backend["weight"]))"
                        }
                        return [
                            index == 0 ? Table.string(route["name"]) : "",
                            index == 0 ? Table.string(route["kind"]) : "",
                            index == 0 ? parents.joined(separator: ",") : "",
                            index == 0 ? status : "",
                            (rule["name"] as? String) ?? String(index),
                            backends.isEmpty ? "(parent)" : backends.joined(separator: ","),
                        ]
                    }
                }
        }
    }
}

struct CtlServices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "services", abstract: "List services.")
    @OptionGroup var options: CtlOptions

    func run() async throws {
        let data = try await options.call(.GET, "/v1/services")
        let instances = try JSONSerialization.jsonObject(with: try await options.call(.GET, "/v1/instances"))
        let list = instances as? [[String: Any]] ?? []
        try options.print(data) { object in
            [["NAME", "PROTOCOL", "BALANCER", "INSTANCES", "HEALTHY"]]
                + (object as? [[String: Any]] ?? []).map { service in
                    let name = Table.string(service["name"])
                    let mine = list.filter { $0["service"] as? String == name }
                    let healthy = mine.filter { $0["health"] as? String == "healthy" }
                    return [
                        name, Table.string(service["protocol"]),
                        Table.string((service["policy"] as? [String: Any])?["balancer"]), String(mine.count),
                        String(healthy.count),
                    ]
                }
        }
    }
}

struct CtlInstances: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "instances", abstract: "List instances.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "Only this service's instances.") var service: String?

    func run() async throws {
        let path = service.map { "/v1/instances?service=\($0)" } ?? "/v1/instances"
        try options.print(try await options.call(.GET, path)) { object in
            [["ID", "SERVICE", "ADDRESS", "ZONE", "WEIGHT", "VERSION", "HEALTH"]]
                + (object as? [[String: Any]] ?? []).map { instance in
                    [
                        Table.string(instance["id"]), Table.string(instance["service"]),
                        "\(Table.string(instance["address"])):\(Table.string(instance["port"]))",
                        Table.string(instance["zone"]), Table.string(instance["weight"]),
                        Table.string(instance["version"]), Table.string(instance["health"]),
                    ]
                }
        }
    }
}

enum ResourceKind: String, ExpressibleByArgument, CaseIterable {
    case service, instance, policy, route

    var collection: String {
        switch self {
        case .service: return "services"
        case .instance: return "instances"
        case .policy: return "policies"
        case .route: return "routes"
        }
    }
}

struct CtlDescribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "describe",
        abstract: "Show one service, instance, policy or route."
    )
    @OptionGroup var options: CtlOptions
    @Argument(help: "service, instance, policy or route") var kind: ResourceKind
    @Argument(help: "Its name or id.") var name: String

    func run() async throws {
        let data = try await options.call(.GET, "/v1/\(kind.collection)/\(name)")
        if options.output == .table {
            let object = try JSONSerialization.jsonObject(with: data)
            Swift.print(try Yams.dump(object: object), terminator: "")
        } else {
            try options.print(data) { _ in [] }
        }
    }
}

struct CtlDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete a service, instance, policy or route."
    )
    @OptionGroup var options: CtlOptions
    @Argument(help: "service, instance, policy or route") var kind: ResourceKind
    @Argument(help: "Its name or id.") var name: String

    func run() async throws {
        _ = try await options.call(.DELETE, "/v1/\(kind.collection)/\(name)")
        print("\(kind.rawValue) \(name) deleted")
    }
}

struct CtlApply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Create or update the resources in a YAML file (several per file, separated by ---).",
        discussion: """
            Each document has kind: Service (with name), Instance (with service, address, port), \
            AuthorizationPolicy (with name, target), HTTPRoute or GRPCRoute (with name, parentRefs, \
            rules; see docs/routes.md), Rollout (with name, service, stable, canary, steps; see \
            docs/rollouts.md) or Mesh (mesh-wide settings).
            """
    )
    @OptionGroup var options: CtlOptions
    @Option(name: .shortAndLong, help: "The YAML file ('-' for standard input).") var file: String

    func run() async throws {
        let text: String
        if file == "-" {
            text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        } else {
            guard let contents = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw CommandFailure("cannot read \(file)")
            }
            text = contents
        }
        let documents: [Node]
        do {
            documents = try Array(Yams.compose_all(yaml: text))
        } catch {
            throw CommandFailure("\(file): not valid YAML: \(error)")
        }
        var failures: [String] = []
        for (index, document) in documents.enumerated() {
            let label = "\(file) document \(index + 1)"
            guard let mapping = document.mapping, let kind = mapping["kind"]?.string?.lowercased() else {
                failures.append(
                    "\(label): kind: is required (Service, Instance, AuthorizationPolicy, HTTPRoute, GRPCRoute, Rollout or Mesh)"
                )
                continue
            }
            let body = try Yams.serialize(node: document)
            do {
                switch kind {
                case "service":
                    guard let name = mapping["name"]?.string else {
                        failures.append("\(label): name: required field is missing")
                        continue
                    }
                    _ = try await options.call(.PUT, "/v1/services/\(name)", body: body)
                    print("service \(name) applied")
                case "instance":
                    guard let service = mapping["service"]?.string, let address = mapping["address"]?.string,
                        let port = mapping["port"]?.int
                    else {
                        failures.append("\(label): service, address and port are required")
                        continue
                    }
                    let id =
                        mapping["id"]?.string
                        ?? InstanceResource.defaultID(service: service, address: address, port: port)
                    _ = try await options.call(.PUT, "/v1/instances/\(id)", body: body)
                    print("instance \(id) applied")
                case "authorizationpolicy":
                    guard let name = mapping["name"]?.string else {
                        failures.append("\(label): name: required field is missing")
                        continue
                    }
                    _ = try await options.call(.PUT, "/v1/policies/\(name)", body: body)
                    print("policy \(name) applied")
                case "httproute", "grpcroute":
                    guard let name = mapping["name"]?.string else {
                        failures.append("\(label): name: required field is missing")
                        continue
                    }
                    _ = try await options.call(.PUT, "/v1/routes/\(name)", body: body)
                    print("route \(name) applied")
                case "rollout":
                    guard let name = mapping["name"]?.string else {
                        failures.append("\(label): name: required field is missing")
                        continue
                    }
                    _ = try await options.call(.PUT, "/v1/rollouts/\(name)", body: body)
                    print("rollout \(name) applied")
                case "mesh":
                    _ = try await options.call(.PUT, "/v1/mesh", body: body)
                    print("mesh settings applied")
                default:
                    failures.append(
                        "\(label): kind: must be Service, Instance, AuthorizationPolicy, HTTPRoute, GRPCRoute, Rollout or Mesh, found \"\(kind)\""
                    )
                }
            } catch let failure as CommandFailure {
                failures.append("\(label): \(failure)")
            }
        }
        if !failures.isEmpty { throw CommandFailure(failures.joined(separator: "\n")) }
    }
}

struct CtlWatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Print registry changes as they happen."
    )
    @OptionGroup var options: CtlOptions
    @Option(name: .long, help: "Comma-separated services (all when absent).") var services: String?

    func run() async throws {
        var path = "/v1/watch?routes=1"
        if let services { path += "&services=\(services)" }
        try await options.stream(path) { line in
            guard !line.isEmpty else { return }
            guard options.output == .table else {
                print(line)
                return
            }
            guard let parsed = try? WatchLine.parse(line) else { return }
            switch parsed {
            case .snapshot(let state):
                print(
                    "revision \(state.revision): \(state.services.count) services, \(state.instances.count) instances"
                )
            case .event(let event):
                var subject = event.service?.name ?? event.policy?.name ?? ""
                if let instance = event.instance {
                    subject = "\(instance.id) (\(instance.service), \(instance.health.rawValue))"
                } else if let route = event.route {
                    subject = "\(route.name) (\(route.parents.joined(separator: ",")))"
                }
                print("revision \(event.revision): \(event.kind.rawValue) \(subject)")
            case .ping, .trustBundle:
                break
            }
        }
    }
}

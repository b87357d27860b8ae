import Yams

/// Who may call a service: a rule evaluated by the target's sidecars on every inbound
/// request (and every inbound TCP connection), before the app sees anything.
///
/// A rule matches when every field it sets matches: the caller's identity (`from`, SPIFFE
/// ID patterns; an unauthenticated caller matches none), the inbound port, a path prefix,
/// a method. Evaluation (as Istio's): a matching `deny` refuses; else, when the target has
/// `allow` rules, one must match; else the mesh-wide default decides.
public struct AuthorizationPolicy: Sendable, Hashable, Encodable {
    public enum Action: String, Sendable, Hashable, Codable, CaseIterable {
        case allow
        case deny
    }

    public var name: String
    /// The service whose inbound side enforces it.
    public var target: String
    public var action: Action = .allow
    /// Source identity patterns: `spiffe://td/service/web`, `spiffe://td/*`, or `*` (any
    /// authenticated caller). Empty: any caller.
    public var from: [String] = []
    /// Inbound listener ports; empty: any.
    public var ports: [Int] = []
    /// Path prefixes; empty: any (HTTP only: a TCP connection matches only rules without paths).
    public var paths: [String] = []
    /// Methods (`GET`, ...); empty: any (HTTP only, like paths).
    public var methods: [String] = []

    public init(name: String, target: String) {
        self.name = name
        self.target = target
    }

    /// Parses a policy from JSON or YAML; `name` (from the URL) wins over the body's.
    public static func parse(_ text: String, name: String? = nil) throws(ConfigErrors) -> AuthorizationPolicy {
        let reader = ConfigReader()
        var result: AuthorizationPolicy?
        if let root = reader.parse(text) {
            result = read(root, reader, name: name)
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    static func read(_ node: Node, _ reader: ConfigReader, name: String?) -> AuthorizationPolicy? {
        let known: Set = ["kind", "name", "target", "action", "from", "ports", "paths", "methods"]
        guard let f = reader.mapping(node, "", known: known) else { return nil }
        let bodyName = f.string("name")
        guard let policyName = name ?? f.required("name", bodyName) else { return nil }
        if let name, let bodyName, bodyName != name {
            reader.fail(f.path("name"), "\"\(bodyName)\" does not match the policy in the URL, \"\(name)\"")
        }
        if let reason = Names.invalidID(policyName) { reader.fail(f.path("name"), reason) }
        let target = f.required("target", f.string("target"))
        if let target, let reason = Names.invalidServiceName(target) { reader.fail(f.path("target"), reason) }
        var policy = AuthorizationPolicy(name: policyName, target: target ?? "")
        if let action = f.choice("action", as: Action.self) { policy.action = action }
        for (path, item) in reader.sequence(f.node("from"), f.path("from")) {
            guard let text = reader.string(item, path) else { continue }
            if IdentityPattern(text) == nil {
                reader.fail(path, "expected a SPIFFE ID, spiffe://<trust-domain>/* or *, found \"\(text)\"")
            }
            policy.from.append(text)
        }
        for (path, item) in reader.sequence(f.node("ports"), f.path("ports")) {
            if let port = reader.int(item, path, range: 1...65535) { policy.ports.append(port) }
        }
        for (path, item) in reader.sequence(f.node("paths"), f.path("paths")) {
            guard let text = reader.string(item, path) else { continue }
            if !text.hasPrefix("/") { reader.fail(path, "a path prefix starts with /, found \"\(text)\"") }
            policy.paths.append(text)
        }
        for (path, item) in reader.sequence(f.node("methods"), f.path("methods")) {
            guard let text = reader.string(item, path) else { continue }
            let valid = !text.isEmpty && text.utf8.allSatisfy { $0 >= 0x41 && $0 <= 0x5A }
            if !valid { reader.fail(path, "expected an upper-case HTTP method like GET, found \"\(text)\"") }
            policy.methods.append(text)
        }
        return target == nil ? nil : policy
    }
}

/// Mesh-wide settings: what happens to a call no policy speaks about, and whether every
/// hop must be mTLS.
public struct MeshSettings: Sendable, Hashable, Codable {
    public var defaultAuthorization: AuthorizationPolicy.Action = .allow
    /// Every sidecar refuses plaintext peers (inbound and outbound), and one without an
    /// identity (no join token, no TLS files) refuses to start.
    public var requireMTLS = false

    public init(defaultAuthorization: AuthorizationPolicy.Action = .allow, requireMTLS: Bool = false) {
        self.defaultAuthorization = defaultAuthorization
        self.requireMTLS = requireMTLS
    }

    private enum CodingKeys: String, CodingKey {
        case defaultAuthorization, requireMTLS
    }

    /// Stores and caches written before `requireMTLS` existed still read.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        defaultAuthorization =
            try container.decodeIfPresent(AuthorizationPolicy.Action.self, forKey: .defaultAuthorization) ?? .allow
        requireMTLS = try container.decodeIfPresent(Bool.self, forKey: .requireMTLS) ?? false
    }

    public static func parse(_ text: String) throws(ConfigErrors) -> MeshSettings {
        let reader = ConfigReader()
        var settings = MeshSettings()
        if let root = reader.parse(text),
            let f = reader.mapping(root, "", known: ["kind", "defaultAuthorization", "requireMTLS"])
        {
            if let action = f.choice("defaultAuthorization", as: AuthorizationPolicy.Action.self) {
                settings.defaultAuthorization = action
            }
            if let require = f.bool("requireMTLS") { settings.requireMTLS = require }
        }
        guard reader.errors.isEmpty else { throw ConfigErrors(reader.errors) }
        return settings
    }
}

/// The compiled rules one service's sidecar enforces: its policies and the mesh default.
public struct AuthorizationTable: Sendable, Hashable {
    struct Rule: Sendable, Hashable {
        let name: String
        let from: [IdentityPattern]
        let ports: [Int]
        let paths: [String]
        let methods: [String]

        func matches(source: SPIFFEID?, port: Int, method: String?, path: Substring?) -> Bool {
            if !from.isEmpty {
                guard let source, from.contains(where: { $0.matches(source) }) else { return false }
            }
            if !ports.isEmpty, !ports.contains(port) { return false }
            if !paths.isEmpty {
                guard let path, paths.contains(where: { RequestPath.hasPrefix(path, $0) }) else { return false }
            }
            if !methods.isEmpty {
                guard let method, methods.contains(method) else { return false }
            }
            return true
        }
    }

    let denies: [Rule]
    let allows: [Rule]
    public let defaultAction: AuthorizationPolicy.Action
    /// Whether any rule looks at the port (callers skip looking it up otherwise).
    public let usesPorts: Bool

    /// The rules of `policies` that target `service`.
    public init(service: String, policies: some Sequence<AuthorizationPolicy>, mesh: MeshSettings) {
        var denies: [Rule] = []
        var allows: [Rule] = []
        for policy in policies where policy.target == service {
            let rule = Rule(
                name: policy.name,
                from: policy.from.compactMap(IdentityPattern.init),
                ports: policy.ports,
                paths: policy.paths,
                methods: policy.methods
            )
            if policy.action == .deny { denies.append(rule) } else { allows.append(rule) }
        }
        self.denies = denies.sorted { $0.name < $1.name }
        self.allows = allows.sorted { $0.name < $1.name }
        self.defaultAction = mesh.defaultAuthorization
        self.usesPorts = (denies + allows).contains { !$0.ports.isEmpty }
    }

    public enum Decision: Sendable, Hashable {
        case allowed
        /// Refused: by the named deny policy, for lack of a matching allow policy, or by
        /// the mesh default.
        case denied(reason: String)

        public var isAllowed: Bool { self == .allowed }
    }

    /// Decides one call; `method` and `path` are nil for a TCP connection. The path
    /// (normalized: `RequestPath`) is matched without its query, each prefix on a segment
    /// boundary.
    public func decide(source: SPIFFEID?, port: Int, method: String?, path: String?) -> Decision {
        let bare = path.map { $0.prefix { $0 != "?" && $0 != "#" } }
        for rule in denies where rule.matches(source: source, port: port, method: method, path: bare) {
            return .denied(reason: "policy \(rule.name)")
        }
        if !allows.isEmpty {
            for rule in allows where rule.matches(source: source, port: port, method: method, path: bare) {
                return .allowed
            }
            return .denied(reason: "no allow policy matches")
        }
        return defaultAction == .allow ? .allowed : .denied(reason: "mesh default is deny")
    }
}

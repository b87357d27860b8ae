/// A workload identity: `spiffe://<trust-domain>/service/<name>`, the only URI SAN of a
/// Meshwork workload certificate.
///
/// Parsing follows the SPIFFE ID spec (spiffe/standards SPIFFE-ID.md §2): scheme `spiffe`,
/// a lowercase trust domain of `[a-z0-9._-]`, a path of non-empty segments of
/// `[A-Za-z0-9._-]` that are not `.` or `..`; no port, user info, query or fragment.
public struct SPIFFEID: Sendable, Hashable, CustomStringConvertible {
    public let trustDomain: String
    /// The path, starting with `/` (empty for the trust domain's own ID).
    public let path: String

    /// The identity of a service's workloads.
    public static func service(_ name: String, trustDomain: String) -> SPIFFEID {
        SPIFFEID(trustDomain: trustDomain, path: "/service/" + name)
    }

    /// The controller's own identity (its API certificate).
    public static func controller(trustDomain: String) -> SPIFFEID {
        SPIFFEID(trustDomain: trustDomain, path: "/controller")
    }

    private init(trustDomain: String, path: String) {
        self.trustDomain = trustDomain
        self.path = path
    }

    /// Parses a SPIFFE ID; nil with anything the spec does not allow.
    public init?(_ text: some StringProtocol) {
        let prefix = "spiffe://"
        guard text.count > prefix.count, text.lowercased().hasPrefix(prefix) else { return nil }
        let rest = text.dropFirst(prefix.count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let domain = String(rest[..<slash])
        let path = String(rest[slash...])
        guard Self.isTrustDomain(domain) else { return nil }
        if !path.isEmpty {
            let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
            for segment in segments {
                guard !segment.isEmpty, segment != ".", segment != "..",
                    segment.utf8.allSatisfy({ Self.isPathByte($0) })
                else { return nil }
            }
        }
        self.trustDomain = domain
        self.path = path
    }

    /// The service name when this is a service identity (`/service/<name>`).
    public var serviceName: String? {
        let prefix = "/service/"
        guard path.hasPrefix(prefix) else { return nil }
        let name = path.dropFirst(prefix.count)
        return name.isEmpty || name.contains("/") ? nil : String(name)
    }

    public var description: String { "spiffe://" + trustDomain + path }

    /// Whether `text` can be a trust domain name.
    public static func isTrustDomain(_ text: some StringProtocol) -> Bool {
        !text.isEmpty && text.count <= 255
            && text.utf8.allSatisfy {
                ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x2D || $0 == 0x5F
            }
    }

    private static func isPathByte(_ byte: UInt8) -> Bool {
        (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39)
            || byte == 0x2E || byte == 0x2D || byte == 0x5F
    }
}

/// Who may call a service: a source identity pattern of an authorization rule. Exact
/// (`spiffe://mesh.local/service/web`), or every workload of a trust domain
/// (`spiffe://mesh.local/*`), or anyone with a mesh identity (`*`).
public enum IdentityPattern: Sendable, Hashable, CustomStringConvertible {
    case exact(SPIFFEID)
    case trustDomain(String)
    case any

    public init?(_ text: String) {
        if text == "*" {
            self = .any
        } else if text.hasSuffix("/*") {
            let domain = text.dropLast(2)
            guard let id = SPIFFEID(domain), id.path.isEmpty else { return nil }
            self = .trustDomain(id.trustDomain)
        } else if let id = SPIFFEID(text) {
            self = .exact(id)
        } else {
            return nil
        }
    }

    public func matches(_ id: SPIFFEID) -> Bool {
        switch self {
        case .exact(let expected): return expected == id
        case .trustDomain(let domain): return id.trustDomain == domain
        case .any: return true
        }
    }

    public var description: String {
        switch self {
        case .exact(let id): return id.description
        case .trustDomain(let domain): return "spiffe://\(domain)/*"
        case .any: return "*"
        }
    }
}

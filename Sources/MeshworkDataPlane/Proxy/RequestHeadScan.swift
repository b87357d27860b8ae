import NIOHTTP1

/// What the proxy reads of a request head, found in one pass over its fields, and the head
/// it sends upstream, built in a second. Before, each question was its own scan
/// (`first(name:)`, `contains(name:)`, one `remove(name:)` per hop-by-hop field): about
/// twenty case-insensitive passes over the fields of every request.
struct RequestHeadScan {
    /// Size of the request line and fields as they came over the wire.
    private(set) var bytes = 0
    private(set) var contentType: String?
    private(set) var contentLength: String?
    private(set) var hasTransferEncoding = false
    /// `TE: trailers` (the only TE that crosses a proxy, RFC 9110 10.1.4).
    private(set) var wantsTrailers = false
    private(set) var upgrade: [String] = []
    /// `Connection` names `upgrade`.
    private(set) var connectionUpgrade = false
    /// Fields named in `Connection` (lowercased): hop-by-hop too (RFC 9110 7.6.1).
    private(set) var connectionTokens: [String] = []
    private(set) var meshworkTimeout: String?
    private(set) var grpcTimeout: String?
    private(set) var proto: String?
    private(set) var host: String?

    init(_ head: HTTPRequestHead) {
        bytes = head.uri.utf8.count + 16
        for (name, value) in head.headers {
            bytes += name.utf8.count + value.utf8.count + 4
            switch Self.field(name) {
            case .connection:
                if Self.connectionTokens(in: value, into: &connectionTokens) { connectionUpgrade = true }
            case .te:
                if value.split(separator: ",").contains(where: { $0.trimmingSpaces().lowercased() == "trailers" }) {
                    wantsTrailers = true
                }
            case .upgrade: upgrade.append(value)
            case .transferEncoding: hasTransferEncoding = true
            case .contentType: if contentType == nil { contentType = value }
            case .contentLength: if contentLength == nil { contentLength = value }
            case .meshworkTimeout: if meshworkTimeout == nil { meshworkTimeout = value }
            case .grpcTimeout: if grpcTimeout == nil { grpcTimeout = value }
            case .proto: if proto == nil { proto = value }
            case .host: if host == nil { host = value }
            case .keepAlive, .proxyConnection, .other: break
            }
        }
    }

    /// Adds the fields a `Connection` value names (lowercased) to `tokens`; returns whether
    /// it names `upgrade`. Left out: `close`, and the fields dropped as hop-by-hop anyway.
    /// Never dropped for being named: `Content-Length` and `Host`. The message's framing
    /// and its target are end to end; a caller that names `Content-Length` would otherwise
    /// have its body forwarded without a length after a head that announces none, so the
    /// upstream would read the body as the next request (smuggling).
    static func connectionTokens(in value: String, into tokens: inout [String]) -> Bool {
        var upgrade = false
        // Token by token without `split` (an array per call: one allocation per response,
        // whose `Connection: keep-alive` comes here).
        var rest = value[...]
        while !rest.isEmpty {
            let comma = rest.firstIndex(of: ",") ?? rest.endIndex
            let token = rest[..<comma].trimmingSpaces().lowercased()
            rest = comma == rest.endIndex ? rest[comma...] : rest[rest.index(after: comma)...]
            switch token {
            case "upgrade": upgrade = true
            case "", "close", "keep-alive", "proxy-connection", "transfer-encoding", "te", "connection",
                "content-length", "host":
                continue
            default: tokens.append(token)
            }
        }
        return upgrade
    }

    /// The request announced a body.
    var hasBody: Bool { hasTransferEncoding || contentLength.map { $0 != "0" } ?? false }

    /// An HTTP/1.1 `Upgrade` (RFC 9110 7.8): an `Upgrade` field and `Connection: upgrade`.
    var isUpgrade: Bool { !upgrade.isEmpty && connectionUpgrade }

    /// The fields the proxy looks at, by name (ASCII case-insensitive).
    enum Field {
        case connection, keepAlive, proxyConnection, transferEncoding, upgrade, te
        case contentType, contentLength, meshworkTimeout, grpcTimeout, proto, host
        case other

        /// Connection-specific: never forwarded (RFC 9110 7.6.1).
        var isHopByHop: Bool {
            switch self {
            case .connection, .keepAlive, .proxyConnection, .transferEncoding, .upgrade, .te: return true
            default: return false
            }
        }
    }

    /// Classifies a field name by its length first, so most names are compared with one
    /// candidate at most.
    static func field(_ name: String) -> Field {
        var name = name
        return name.withUTF8 { bytes in
            func matches(_ known: StaticString) -> Bool {
                guard bytes.count == known.utf8CodeUnitCount else { return false }
                let known = UnsafeBufferPointer(start: known.utf8Start, count: known.utf8CodeUnitCount)
                for index in 0..<bytes.count {
                    var byte = bytes[index]
                    if byte >= 0x41, byte <= 0x5A { byte |= 0x20 }
                    if byte != known[index] { return false }
                }
                return true
            }
            switch bytes.count {
            case 2: return matches("te") ? .te : .other
            case 4: return matches("host") ? .host : .other
            case 7: return matches("upgrade") ? .upgrade : .other
            case 10:
                if matches("connection") { return .connection }
                return matches("keep-alive") ? .keepAlive : .other
            case 12:
                if matches("content-type") { return .contentType }
                return matches("grpc-timeout") ? .grpcTimeout : .other
            case 14: return matches("content-length") ? .contentLength : .other
            case 16:
                if matches("proxy-connection") { return .proxyConnection }
                return matches("x-meshwork-proto") ? .proto : .other
            case 17: return matches("transfer-encoding") ? .transferEncoding : .other
            case 18: return matches("x-meshwork-timeout") ? .meshworkTimeout : .other
            default: return .other
            }
        }
    }

    /// The fields as they go upstream, in their order: hop-by-hop fields and those named in
    /// `Connection` left out, and so are the fields in `dropping` (the proxy writes its
    /// own). One copy, reserved with room for the fields the proxy adds.
    func forwardedFields(of headers: HTTPHeaders, dropping: (Field) -> Bool) -> HTTPHeaders {
        var out = HTTPHeaders()
        out.reserveCapacity(headers.count + 4)
        for (name, value) in headers {
            let field = Self.field(name)
            if field.isHopByHop || dropping(field) { continue }
            if !connectionTokens.isEmpty, connectionTokens.contains(name.lowercased()) { continue }
            out.add(name: name, value: value)
        }
        return out
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs (optional whitespace, RFC 9110 5.6.3).
    func trimmingSpaces() -> Substring {
        var start = startIndex
        var end = endIndex
        while start < end, self[start] == " " || self[start] == "\t" { start = index(after: start) }
        while end > start, self[index(before: end)] == " " || self[index(before: end)] == "\t" {
            end = index(before: end)
        }
        return self[start..<end]
    }
}

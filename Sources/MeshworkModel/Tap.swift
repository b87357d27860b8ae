/// What a tap asks to see: every field is a filter that must match (nil: any), then a
/// sampled share of the matches, at most `maxPerSecond` of them.
public struct TapFilter: Sendable, Hashable {
    public var direction: EdgeDirection?
    /// The request path starts with this.
    public var pathPrefix: String?
    /// A status class (`5xx` -> 5) or an exact code.
    public var statusClass: Int?
    public var status: Int?
    public var method: String?
    /// The other service (caller of an inbound request, callee of an outbound one).
    public var peer: String?
    public var sampleRate: Double = 1
    public var maxPerSecond: Double = 100

    public init() {}

    /// From a query string (`path=/api&status=5xx&direction=inbound&method=GET&peer=web&
    /// sample=0.5&rate=50`); an unknown or malformed parameter is refused with its name.
    public static func parse(query: Substring?) throws(ConfigErrors) -> TapFilter {
        var filter = TapFilter()
        var errors: [ConfigError] = []
        for pair in (query ?? "").split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts[0]
            let value = parts.count > 1 ? (parts[1].removingPercentEncodingForTap ?? parts[1]) : ""
            switch name {
            case "direction":
                if let direction = EdgeDirection(rawValue: value) {
                    filter.direction = direction
                } else {
                    errors.append(ConfigError(path: name, reason: "must be inbound or outbound, found \"\(value)\""))
                }
            case "path":
                if value.hasPrefix("/") {
                    filter.pathPrefix = value
                } else {
                    errors.append(ConfigError(path: name, reason: "must start with /, found \"\(value)\""))
                }
            case "status":
                let lower = value.lowercased()
                if lower.count == 3, lower.hasSuffix("xx"), let first = Int(lower.prefix(1)), (1...5).contains(first) {
                    filter.statusClass = first
                } else if let code = Int(value), (100...599).contains(code) {
                    filter.status = code
                } else {
                    errors.append(
                        ConfigError(
                            path: name,
                            reason: "expected a class like 5xx or a code like 503, found \"\(value)\""
                        )
                    )
                }
            case "method":
                if !value.isEmpty, value.allSatisfy({ $0.isLetter }) {
                    filter.method = value.uppercased()
                } else {
                    errors.append(ConfigError(path: name, reason: "expected an HTTP method, found \"\(value)\""))
                }
            case "peer":
                filter.peer = value
            case "sample":
                if let rate = Double(value), (0...1).contains(rate), rate > 0 {
                    filter.sampleRate = rate
                } else {
                    errors.append(ConfigError(path: name, reason: "expected a share above 0 and at most 1"))
                }
            case "rate":
                if let rate = Double(value), rate >= 1, rate <= 1000 {
                    filter.maxPerSecond = rate
                } else {
                    errors.append(ConfigError(path: name, reason: "expected events per second from 1 to 1000"))
                }
            case "limit", "service":
                break  // read by whoever streams the events
            default:
                errors.append(
                    ConfigError(
                        path: name,
                        reason: "unknown parameter (known: direction, path, status, method, peer, sample, rate, limit)"
                    )
                )
            }
        }
        guard errors.isEmpty else { throw ConfigErrors(errors) }
        return filter
    }

    package func matches(direction: EdgeDirection, peer: String, method: String, path: String, status: Int) -> Bool {
        if let wanted = self.direction, wanted != direction { return false }
        if let statusClass, status / 100 != statusClass { return false }
        if let wanted = self.status, wanted != status { return false }
        if let wanted = self.method, wanted != method { return false }
        if let wanted = self.peer, wanted != peer { return false }
        if let pathPrefix, !path.utf8.starts(with: pathPrefix.utf8) { return false }  // bytes, not Characters
        return true
    }
}

extension String {
    /// `%2F` and `+` decoding for query values (Foundation-free).
    fileprivate var removingPercentEncodingForTap: String? {
        var bytes: [UInt8] = []
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte == UInt8(ascii: "+") ? UInt8(ascii: " ") : byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}

/// One request as a tap shows it: metadata only, never headers or bodies.
public struct TapEvent: Sendable, Codable {
    public var time: String
    public var direction: String
    public var source: String
    public var target: String
    public var method: String
    public var path: String
    public var status: Int
    public var latencyMs: Double
    public var meshError: String?
    public var traceId: String?
    /// The route rule that decided the exchange (`route/rule`), on the caller's side.
    public var route: String?

    public init(
        time: String,
        direction: String,
        source: String,
        target: String,
        method: String,
        path: String,
        status: Int,
        latencyMs: Double,
        meshError: String?,
        traceId: String?,
        route: String? = nil
    ) {
        self.time = time
        self.direction = direction
        self.source = source
        self.target = target
        self.method = method
        self.path = path
        self.status = status
        self.latencyMs = latencyMs
        self.meshError = meshError
        self.traceId = traceId
        self.route = route
    }
}

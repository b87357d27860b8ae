/// A listen or connect address as written in config: `127.0.0.1:9001`, `[::1]:9001`,
/// `localhost:9001`. Port 0 asks the kernel for a free port (useful in tests).
public struct HostPort: Hashable, Sendable, CustomStringConvertible, Codable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Whether only this machine can reach the address: `localhost`, 127.0.0.0/8 or `::1`
    /// (a wildcard like 0.0.0.0 is not).
    public var isLoopback: Bool {
        let host = self.host.lowercased()
        if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    public static func parse(_ text: String) -> Result<HostPort, ConfigError> {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(ConfigError(path: "", reason: "unterminated [ in address \"\(text)\""))
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else {
                return .failure(ConfigError(path: "", reason: "expected host:port, found \"\(text)\""))
            }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(ConfigError(path: "", reason: "expected host:port, found \"\(text)\""))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                return .failure(
                    ConfigError(path: "", reason: "IPv6 addresses need brackets: [addr]:port, found \"\(text)\"")
                )
            }
        }
        guard !host.isEmpty else {
            return .failure(ConfigError(path: "", reason: "missing host in \"\(text)\""))
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(ConfigError(path: "", reason: "port must be a number from 0 to 65535 in \"\(text)\""))
        }
        return .success(HostPort(host: String(host), port: port))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        switch HostPort.parse(text) {
        case .success(let value): self = value
        case .failure(let error):
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.reason)
        }
    }
}

/// Durations in config are written with a unit: `250ms`, `5s`, `2m`, `1h`.
public enum DurationText {
    /// The longest duration any field takes: ten years. Longer ones are refused like any
    /// malformed duration (with the field's path), rather than overflowing 64-bit
    /// nanoseconds (`1e30s` used to crash the process that read it) or a deadline computed
    /// from them.
    public static let maximum: Duration = .seconds(10 * 365 * 24 * 3600)

    /// A duration like `250ms`, `1.5s`, `2m`, `1h` (also `us`); nil when malformed,
    /// negative or over `maximum`.
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [
            ("ms", 1_000_000), ("us", 1_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
        ]
        for (suffix, nanos) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            // "ms" must win over "s": skip "s" when the text ends in "ms"/"us".
            if suffix == "s", number.hasSuffix("m") || number.hasSuffix("u") { continue }
            guard let value = Double(number), value >= 0, value.isFinite else { return nil }
            let total = value * Double(nanos)
            guard total <= Double(maximum.components.seconds) * 1e9 else { return nil }
            return .nanoseconds(Int64(total))
        }
        return nil
    }

    public static func format(_ duration: Duration) -> String {
        let (seconds, attos) = duration.components
        let ms = seconds * 1000 + attos / 1_000_000_000_000_000
        if ms % 3_600_000 == 0, ms > 0 { return "\(ms / 3_600_000)h" }
        if ms % 60_000 == 0, ms > 0 { return "\(ms / 60_000)m" }
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        return "\(ms)ms"
    }
}

/// A config file that cannot be used, with the path of the offending field and why.
///
/// `path` uses dotted keys and `[index]` for list items, e.g. `clusters[1].endpoints[0]`.
public struct ConfigError: Error, Hashable, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String {
        path.isEmpty ? reason : "\(path): \(reason)"
    }
}

/// All the problems found in one config file, so an operator fixes them in one go.
public struct ConfigErrors: Error, CustomStringConvertible, Sendable {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) {
        self.errors = errors
    }

    public var description: String {
        "invalid config:\n" + errors.map { "  - \($0)" }.joined(separator: "\n")
    }
}

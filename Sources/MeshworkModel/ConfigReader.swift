import Yams

/// Walks a parsed YAML document field by field, remembering where it is so every problem
/// is reported with the path of the field and the reason, and collecting all problems
/// instead of stopping at the first one.
///
/// Unknown keys are errors: a misspelt `conectTimeout` must not silently fall back to the
/// default.
package final class ConfigReader {
    package private(set) var errors: [ConfigError] = []

    package init() {}

    package func fail(_ path: String, _ reason: String) {
        errors.append(ConfigError(path: path, reason: reason))
    }

    /// Parses YAML text into a node, recording a syntax error at the document root.
    package func parse(_ text: String) -> Node? {
        do {
            guard let node = try Yams.compose(yaml: text) else {
                return Node.mapping(Node.Mapping([]))
            }
            return node
        } catch let error as YamlError {
            fail("", "not valid YAML: \(error)")
        } catch {
            fail("", "not valid YAML: \(error)")
        }
        return nil
    }

    /// A mapping whose keys are checked against `known`.
    package func mapping(_ node: Node?, _ path: String, known: Set<String>) -> Fields? {
        guard let node else { return nil }
        guard let mapping = node.mapping else {
            fail(path, "expected a mapping (key: value), found \(describe(node))")
            return nil
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string else {
                fail(path, "keys must be strings")
                continue
            }
            if !known.contains(name) {
                let hint = known.sorted().joined(separator: ", ")
                fail(join(path, name), "unknown field (known fields: \(hint))")
                continue
            }
            values[name] = value
        }
        return Fields(reader: self, path: path, values: values)
    }

    package func sequence(_ node: Node?, _ path: String) -> [(String, Node)] {
        guard let node else { return [] }
        if case .scalar(let scalar) = node, scalar.string == "" || scalar.string == "~" || scalar.string == "null" {
            return []
        }
        guard let sequence = node.sequence else {
            fail(path, "expected a list, found \(describe(node))")
            return []
        }
        return sequence.enumerated().map { ("\(path)[\($0.offset)]", $0.element) }
    }

    package func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            fail(path, "expected a string, found \(describe(node))")
            return nil
        }
        return scalar.string
    }

    package func int(_ node: Node, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let text = string(node, path) else { return nil }
        guard let value = Int(text) else {
            fail(path, "expected an integer, found \"\(text)\"")
            return nil
        }
        guard range.contains(value) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound), found \(value)")
            return nil
        }
        return value
    }

    package func double(_ node: Node, _ path: String, range: ClosedRange<Double>) -> Double? {
        guard let text = string(node, path) else { return nil }
        guard let value = Double(text), value.isFinite else {
            fail(path, "expected a number, found \"\(text)\"")
            return nil
        }
        guard range.contains(value) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound), found \(text)")
            return nil
        }
        return value
    }

    /// `off`/`false` (nil: the feature is disabled), `on`/`true` (the defaults), or a
    /// mapping read by `read` on top of the defaults.
    package func toggle<T>(
        _ node: Node?,
        _ path: String,
        default value: T,
        known: Set<String>,
        read: (inout T, Fields) -> Void
    ) -> T?? {
        guard let node else { return .none }
        if case .scalar(let scalar) = node {
            switch scalar.string.lowercased() {
            case "off", "false", "no", "", "~", "null": return .some(nil)
            case "on", "true", "yes": return .some(value)
            default:
                fail(path, "expected on, off or a mapping, found \"\(scalar.string)\"")
                return .none
            }
        }
        guard let fields = mapping(node, path, known: known) else { return .none }
        var result = value
        read(&result, fields)
        return .some(result)
    }

    package func bool(_ node: Node, _ path: String) -> Bool? {
        guard let text = string(node, path) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            fail(path, "expected true or false, found \"\(text)\"")
            return nil
        }
    }

    package func duration(_ node: Node, _ path: String) -> TimeSpan? {
        guard let text = string(node, path) else { return nil }
        guard let value = DurationText.parse(text) else {
            fail(path, "expected a duration like 250ms, 5s, 2m or 1h (at most 87600h), found \"\(text)\"")
            return nil
        }
        return TimeSpan(value)
    }

    package func address(_ node: Node, _ path: String) -> HostPort? {
        guard let text = string(node, path) else { return nil }
        switch HostPort.parse(text) {
        case .success(let address): return address
        case .failure(let error):
            fail(path, error.reason)
            return nil
        }
    }

    package func choice<T: RawRepresentable & CaseIterable>(_ node: Node, _ path: String, as: T.Type) -> T?
    where T.RawValue == String {
        guard let text = string(node, path) else { return nil }
        guard let value = T(rawValue: text) else {
            let allowed = T.allCases.map(\.rawValue).joined(separator: ", ")
            fail(path, "must be one of \(allowed), found \"\(text)\"")
            return nil
        }
        return value
    }

    private func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): return "\"\(scalar.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    package func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }

    /// The fields of one mapping, read by name.
    package struct Fields {
        let reader: ConfigReader
        package let path: String
        let values: [String: Node]

        package func node(_ key: String) -> Node? { values[key] }
        package func path(_ key: String) -> String { reader.join(path, key) }

        package func string(_ key: String) -> String? {
            values[key].flatMap { reader.string($0, path(key)) }
        }
        package func int(_ key: String, range: ClosedRange<Int>) -> Int? {
            values[key].flatMap { reader.int($0, path(key), range: range) }
        }
        package func double(_ key: String, range: ClosedRange<Double>) -> Double? {
            values[key].flatMap { reader.double($0, path(key), range: range) }
        }
        package func bool(_ key: String) -> Bool? {
            values[key].flatMap { reader.bool($0, path(key)) }
        }
        package func duration(_ key: String) -> TimeSpan? {
            values[key].flatMap { reader.duration($0, path(key)) }
        }
        package func address(_ key: String) -> HostPort? {
            values[key].flatMap { reader.address($0, path(key)) }
        }
        package func choice<T: RawRepresentable & CaseIterable>(_ key: String, as type: T.Type) -> T?
        where T.RawValue == String {
            values[key].flatMap { reader.choice($0, path(key), as: type) }
        }
        package func required<T>(_ key: String, _ value: T?) -> T? {
            if values[key] == nil {
                reader.fail(path(key), "required field is missing")
            }
            return value
        }
    }
}

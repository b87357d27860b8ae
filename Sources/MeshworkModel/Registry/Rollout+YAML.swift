import Yams

// Reading a rollout from the operator's YAML or the controller's JSON (the same shape),
// every problem reported with its field path; and writing it back in that shape.
extension Rollout {
    /// Parses a rollout; `name` (from the URL) wins over the body's.
    public static func parse(_ text: String, name: String? = nil) throws(ConfigErrors) -> Rollout {
        let reader = ConfigReader()
        var result: Rollout?
        if let root = reader.parse(text) { result = read(root, reader, name: name) }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    static func read(_ node: Node, _ reader: ConfigReader, name: String?) -> Rollout? {
        // (`status` is what the API answers with: read back and ignored.)
        let known: Set = [
            "kind", "name", "service", "stable", "canary", "steps", "failureLimit", "inconclusiveLimit", "webhooks",
            "created", "status",
        ]
        guard let f = reader.mapping(node, "", known: known) else { return nil }
        if let kind = f.string("kind"), kind != "Rollout" {
            reader.fail(f.path("kind"), "expected Rollout, found \"\(kind)\"")
        }
        let bodyName = f.string("name")
        let rolloutName = name ?? f.required("name", bodyName)
        if let name, let bodyName, bodyName != name {
            reader.fail(f.path("name"), "\"\(bodyName)\" does not match the rollout in the URL, \"\(name)\"")
        }
        // Its route is `rollout-<name>`: a route name, so at most 55 characters here.
        if let rolloutName, let reason = Names.invalidID(rolloutName) {
            reader.fail(f.path("name"), reason)
        } else if let rolloutName, rolloutName.utf8.count > 55 {
            reader.fail(f.path("name"), "at most 55 characters (its route is rollout-<name>)")
        }
        let service = f.required("service", f.string("service"))
        if let service, let reason = Names.invalidServiceName(service) { reader.fail(f.path("service"), reason) }
        let stable = f.required("stable", f.string("stable"))
        let canary = f.required("canary", f.string("canary"))
        for (key, version) in [("stable", stable), ("canary", canary)] {
            if let version, !HTTPRoute.isLabelValue(version) {
                reader.fail(f.path(key), "1 to 63 letters, digits, '-', '_' or '.', found \"\(version)\"")
            }
        }
        if let stable, let canary, stable == canary {
            reader.fail(f.path("canary"), "the same version as stable: nothing would move")
        }
        guard let rolloutName, let service, let stable, let canary else { return nil }
        var rollout = Rollout(name: rolloutName, service: service, stable: stable, canary: canary)
        if let created = f.int("created", range: 0...Int.max) { rollout.created = Int64(created) }
        if let limit = f.int("failureLimit", range: 0...1000) { rollout.failureLimit = limit }
        if let limit = f.int("inconclusiveLimit", range: 0...1000) { rollout.inconclusiveLimit = limit }
        let steps = reader.sequence(f.node("steps"), f.path("steps"))
        if steps.isEmpty { reader.fail(f.path("steps"), "needs at least one step") }
        if steps.count > maxSteps { reader.fail(f.path("steps"), "at most \(maxSteps) steps") }
        for (path, item) in steps.prefix(maxSteps) {
            if let step = readStep(item, path, reader) { rollout.steps.append(step) }
        }
        if let w = reader.mapping(
            f.node("webhooks"),
            f.path("webhooks"),
            known: ["preRollout", "confirmPromotion", "rollback", "timeout", "retries"]
        ) {
            for key in ["preRollout", "confirmPromotion", "rollback"] {
                guard let url = w.string(key) else { continue }
                if !isWebhookURL(url) {
                    reader.fail(w.path(key), "an http:// or https:// URL, found \"\(url)\"")
                    continue
                }
                switch key {
                case "preRollout": rollout.webhooks.preRollout = url
                case "confirmPromotion": rollout.webhooks.confirmPromotion = url
                default: rollout.webhooks.rollback = url
                }
            }
            if let timeout = w.duration("timeout")?.duration {
                if timeout < .milliseconds(10) || timeout > .seconds(60) {
                    reader.fail(w.path("timeout"), "from 10ms to 60s")
                } else {
                    rollout.webhooks.timeout = timeout
                }
            }
            if let retries = w.int("retries", range: 0...10) { rollout.webhooks.retries = retries }
        }
        if reader.errors.isEmpty { HTTPRoute.checkStrings(rollout.tree, "", reader) }
        return rollout
    }

    private static func readStep(_ node: Node, _ path: String, _ reader: ConfigReader) -> RolloutStep? {
        // (`mirror` is the and Flagger's name for Argo's `setMirrorRoute`: both read.)
        let kinds: Set = ["setWeight", "pause", "analysis", "setHeaderRoute", "setMirrorRoute", "mirror"]
        guard let f = reader.mapping(node, path, known: kinds) else { return nil }
        let present = kinds.filter { f.node($0) != nil }
        guard present.count == 1, let kind = present.first else {
            reader.fail(path, "one of setWeight, pause, analysis, setHeaderRoute or setMirrorRoute (mirror)")
            return nil
        }
        switch kind {
        case "setWeight":
            return f.int("setWeight", range: 0...100).map { .setWeight($0) }
        case "pause":
            guard let p = reader.mapping(f.node("pause"), f.path("pause"), known: ["duration"]) else { return nil }
            guard p.node("duration") != nil else { return .pause(nil) }
            guard let duration = p.duration("duration")?.duration else { return nil }
            if duration < .seconds(1) {
                reader.fail(p.path("duration"), "at least 1s (leave it out to wait for promote)")
            }
            return .pause(duration)
        case "analysis":
            let known: Set = ["successRate", "p99", "interval", "minRequests", "count", "route"]
            guard let a = reader.mapping(f.node("analysis"), f.path("analysis"), known: known) else { return nil }
            var analysis = RolloutAnalysis()
            analysis.successRate = a.double("successRate", range: 0...100)
            analysis.p99 = a.duration("p99")?.duration
            if let interval = a.duration("interval")?.duration {
                if interval < .seconds(1) { reader.fail(a.path("interval"), "at least 1s") }
                analysis.interval = interval
            }
            if let n = a.int("minRequests", range: 1...1_000_000) { analysis.minRequests = n }
            if let n = a.int("count", range: 1...100) { analysis.count = n }
            if let route = a.string("route") {
                if route == "canary" || route == "header" {
                    analysis.route = route
                } else {
                    reader.fail(
                        a.path("route"),
                        "canary or header (the rules of the rollout's route), found \"\(route)\""
                    )
                }
            }
            if analysis.successRate == nil, analysis.p99 == nil {
                reader.fail(f.path("analysis"), "needs successRate, p99 or both")
            }
            return .analysis(analysis)
        case "setHeaderRoute":
            guard let h = reader.mapping(f.node("setHeaderRoute"), f.path("setHeaderRoute"), known: ["match"])
            else { return nil }
            let headers = HTTPRoute.readHeaderMatches(h.node("match"), h.path("match"), reader)
            if headers.count > HTTPRoute.maxMatches {
                reader.fail(h.path("match"), "at most \(HTTPRoute.maxMatches) headers")
            }
            return .setHeaderRoute(headers)
        default:
            guard let m = reader.mapping(f.node(kind), f.path(kind), known: ["percent"]),
                let percent = m.required("percent", m.double("percent", range: 0...100))
            else { return nil }
            return .mirror(percent)
        }
    }

    static func isWebhookURL(_ text: String) -> Bool {
        guard text.hasPrefix("http://") || text.hasPrefix("https://"), text.utf8.count <= 2048 else { return false }
        let rest = text.drop { $0 != "/" }.dropFirst(2)
        return !rest.isEmpty && !rest.hasPrefix("/") && rest.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }
}

extension Rollout: Encodable {
    public func encode(to encoder: any Encoder) throws {
        try tree.encode(to: encoder)
    }

    var tree: HTTPRoute.Tree {
        var pairs: [(String, HTTPRoute.Tree)] = [
            ("kind", .string("Rollout")), ("name", .string(name)), ("created", .int(Int(created))),
            ("service", .string(service)), ("stable", .string(stable)), ("canary", .string(canary)),
            ("failureLimit", .int(failureLimit)), ("inconclusiveLimit", .int(inconclusiveLimit)),
            ("steps", .array(steps.map(\.tree))),
        ]
        if !webhooks.isEmpty {
            var hooks: [(String, HTTPRoute.Tree)] = []
            if let url = webhooks.preRollout { hooks.append(("preRollout", .string(url))) }
            if let url = webhooks.confirmPromotion { hooks.append(("confirmPromotion", .string(url))) }
            if let url = webhooks.rollback { hooks.append(("rollback", .string(url))) }
            hooks.append(("timeout", .string(webhooks.timeout.routeText)))
            hooks.append(("retries", .int(webhooks.retries)))
            pairs.append(("webhooks", .object(hooks)))
        }
        return .object(pairs)
    }
}

extension RolloutStep {
    var tree: HTTPRoute.Tree {
        switch self {
        case .setWeight(let weight):
            return .object([("setWeight", .int(weight))])
        case .pause(let duration):
            return .object([("pause", .object(duration.map { [("duration", .string($0.routeText))] } ?? []))])
        case .analysis(let a):
            var pairs: [(String, HTTPRoute.Tree)] = []
            if let rate = a.successRate { pairs.append(("successRate", .double(rate))) }
            if let p99 = a.p99 { pairs.append(("p99", .string(p99.routeText))) }
            pairs.append(("interval", .string(a.interval.routeText)))
            pairs.append(("minRequests", .int(a.minRequests)))
            pairs.append(("count", .int(a.count)))
            if let route = a.route { pairs.append(("route", .string(route))) }
            return .object([("analysis", .object(pairs))])
        case .setHeaderRoute(let headers):
            return .object([("setHeaderRoute", .object([("match", .array(headers.map(\.tree)))]))])
        case .mirror(let percent):
            return .object([("setMirrorRoute", .object([("percent", .double(percent))]))])
        }
    }
}

/// A rollout as the API answers: its own fields, then `status` (where it is) and `route`
/// (the route it writes).
public struct RolloutWithStatus: Sendable, Encodable {
    public var rollout: Rollout
    public var status: RolloutStatus

    public init(rollout: Rollout, status: RolloutStatus) {
        self.rollout = rollout
        self.status = status
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        if case .object(let pairs) = rollout.tree {
            for (key, value) in pairs { try container.encode(value, forKey: Key(key)) }
        }
        try container.encode(status, forKey: Key("status"))
        try container.encode(rollout.routeName, forKey: Key("route"))
    }
}

/// A route's status as the controller serves it (`/v1/routes`, `ctl routes`), in Gateway
/// API's shape: conditions computed from the registry at the time of the read, never stored.
///
/// - `Accepted`: the route applies (False, `NoMatchingParent`, when no parent service is
///   known to the registry: no caller can apply it yet).
/// - `ResolvedRefs`: every backend and mirror names a known service with instances
///   (False, `BackendNotFound`: those requests get `503 no_healthy_endpoint` until they come).
/// - `Conflicted` (Meshwork's): True, `ShadowedMatch`, when one of its matches is the same
///   match as one of a rule that takes precedence for the same parent (an older route's, or
///   an earlier rule's): Gateway API's precedence sends those requests there, never here.
public struct RouteCondition: Sendable, Hashable, Codable {
    public var type: String
    /// `True` or `False`, as Gateway API writes them.
    public var status: String
    public var reason: String
    public var message: String

    public init(type: String, status: Bool, reason: String, message: String) {
        self.type = type
        self.status = status ? "True" : "False"
        self.reason = reason
        self.message = message
    }

    public var isTrue: Bool { status == "True" }
}

/// A route with its conditions: what the API answers.
public struct RouteWithStatus: Sendable, Encodable {
    public var route: HTTPRoute
    public var conditions: [RouteCondition]

    public init(route: HTTPRoute, conditions: [RouteCondition]) {
        self.route = route
        self.conditions = conditions
    }

    public func encode(to encoder: any Encoder) throws {
        guard case .object(var pairs) = route.tree else { return try route.encode(to: encoder) }
        let conditions: [HTTPRoute.Tree] = conditions.map {
            .object([
                ("type", .string($0.type)), ("status", .string($0.status)), ("reason", .string($0.reason)),
                ("message", .string($0.message)),
            ])
        }
        pairs.append(("status", .object([("conditions", .array(conditions))])))
        try HTTPRoute.Tree.object(pairs).encode(to: encoder)
    }
}

extension HTTPRoute {
    /// Whether this route's rules take precedence over `other`'s for equal matches: the
    /// older one (its creation revision), then the name (Gateway API).
    func precedes(_ other: HTTPRoute) -> Bool {
        (created, name) < (other.created, other.name)
    }

    /// Whether both routes apply at one gateway listener to the same hosts (a route with
    /// more specific hostnames wins whatever its age, so only equal sets can shadow).
    func sharesAGateway(with other: HTTPRoute) -> Bool {
        let listeners = gateways.contains { mine in
            other.gateways.contains {
                $0.name == mine.name && ($0.listener == nil || mine.listener == nil || $0.listener == mine.listener)
            }
        }
        return listeners && Set(hostnames) == Set(other.hostnames)
    }

    /// The route's conditions among `routes` (every stored route, itself included).
    /// `serviceExists`: the registry knows the service; `instances`: how many of a
    /// backend's instances are registered (its subset's, for a subset).
    public func conditions(
        among routes: [HTTPRoute],
        serviceExists: (String) -> Bool,
        instances: (RouteBackend) -> Int
    ) -> [RouteCondition] {
        var conditions: [RouteCondition] = []
        let known = parents.filter(serviceExists)
        // A gateway is not in the registry (it registers no instance): it is taken at its
        // word, and applies the route once it watches.
        let appliers =
            (known.isEmpty ? [] : ["the callers of " + known.joined(separator: ", ")])
            + gateways.map { "gateway \($0.name)" + ($0.listener.map { " (listener \($0))" } ?? "") }
        if appliers.isEmpty {
            conditions.append(
                RouteCondition(
                    type: "Accepted",
                    status: false,
                    reason: "NoMatchingParent",
                    message: "no parent service is known: \(parents.joined(separator: ", "))"
                )
            )
        } else {
            conditions.append(
                RouteCondition(
                    type: "Accepted",
                    status: true,
                    reason: "Accepted",
                    message: "applied by " + appliers.joined(separator: " and ")
                )
            )
        }

        var missing: [String] = []
        for (r, rule) in rules.enumerated() {
            var targets: [(String, RouteBackend)] = rule.backends.enumerated().map {
                ("rules[\(r)].backendRefs[\($0)]", $1)
            }
            for (f, filter) in rule.filters.enumerated() {
                if case .mirror(let mirror) = filter {
                    targets.append(("rules[\(r)].filters[\(f)].requestMirror", mirror.backend))
                }
            }
            for (path, backend) in targets where instances(backend) == 0 {
                let what =
                    backend.isSubset
                    ? "no instance of the subset \(backend.clusterName)" : "no instance of \(backend.service)"
                missing.append("\(path): \(serviceExists(backend.service) ? what : "no service \(backend.service)")")
            }
        }
        conditions.append(
            missing.isEmpty
                ? RouteCondition(
                    type: "ResolvedRefs",
                    status: true,
                    reason: "ResolvedRefs",
                    message: "every backend has instances"
                )
                : RouteCondition(
                    type: "ResolvedRefs",
                    status: false,
                    reason: "BackendNotFound",
                    message: missing.joined(separator: "; ")
                )
        )

        var shadowed: [String] = []
        let rivals = routes.filter {
            $0.name != name && $0.precedes(self)
                && (!Set($0.parents).isDisjoint(with: parents) || sharesAGateway(with: $0))
        }
        for (r, rule) in rules.enumerated() {
            for (m, match) in rule.effectiveMatches.enumerated() {
                let key = match.normalized
                if let earlier = rules[..<r].firstIndex(where: { $0.effectiveMatches.contains { $0.normalized == key } }
                ) {
                    shadowed.append(
                        "rules[\(r)].matches[\(m)] is the same match as rules[\(earlier)]'s, which takes its requests"
                    )
                    continue
                }
                for rival in rivals {
                    if let index = rival.rules.firstIndex(where: {
                        $0.effectiveMatches.contains { $0.normalized == key }
                    }) {
                        shadowed.append(
                            "rules[\(r)].matches[\(m)] is the same match as \(rival.name)'s rules[\(index)], which takes precedence (older)"
                        )
                        break
                    }
                }
            }
        }
        conditions.append(
            shadowed.isEmpty
                ? RouteCondition(
                    type: "Conflicted",
                    status: false,
                    reason: "NoConflicts",
                    message: "no match is taken by another rule"
                )
                : RouteCondition(
                    type: "Conflicted",
                    status: true,
                    reason: "ShadowedMatch",
                    message: shadowed.joined(separator: "; ")
                )
        )
        return conditions
    }
}

extension RouteRule {
    /// The rule's matches; none means every request (`PathPrefix /`).
    var effectiveMatches: [RouteMatch] { matches.isEmpty ? [RouteMatch()] : matches }
}

extension RouteMatch {
    /// The match with its header and query tests in a canonical order: two matches that
    /// select the same requests compare equal.
    var normalized: RouteMatch {
        var match = self
        match.headers.sort { ($0.name, "\($0.test)") < ($1.name, "\($1.test)") }
        match.queryParams.sort { ($0.name, $0.value, $0.regex ? 1 : 0) < ($1.name, $1.value, $1.regex ? 1 : 0) }
        return match
    }
}

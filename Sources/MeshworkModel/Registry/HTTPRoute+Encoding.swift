/// A route written back in the shape it is read in (Gateway API's), for the API, the
/// store and the watch stream: `HTTPRoute.parse` reads what this writes.
extension HTTPRoute: Encodable {
    public func encode(to encoder: any Encoder) throws {
        try tree.encode(to: encoder)
    }

    var tree: Tree {
        .object([
            ("kind", .string(kind.rawValue)),
            ("name", .string(name)),
            ("created", .int(Int(created))),
            (
                "parentRefs",
                .array(
                    parents.map { .object([("name", .string($0))]) }
                        + gateways.map { gateway in
                            var pairs: [(String, Tree)] = [
                                ("kind", .string("Gateway")), ("name", .string(gateway.name)),
                            ]
                            if let listener = gateway.listener { pairs.append(("sectionName", .string(listener))) }
                            return .object(pairs)
                        }
                )
            ),
            ("hostnames", .array(hostnames.map { .string($0) })),
            ("rules", .array(rules.map { $0.tree(kind: kind) })),
        ])
    }

    /// A JSON value with its keys in order.
    enum Tree: Encodable {
        case string(String)
        case int(Int)
        case double(Double)
        case array([Tree])
        case object([(String, Tree)])

        private struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            switch self {
            case .string(let value):
                var container = encoder.singleValueContainer()
                try container.encode(value)
            case .int(let value):
                var container = encoder.singleValueContainer()
                try container.encode(value)
            case .double(let value):
                var container = encoder.singleValueContainer()
                try container.encode(value)
            case .array(let values):
                var container = encoder.unkeyedContainer()
                for value in values { try container.encode(value) }
            case .object(let pairs):
                var container = encoder.container(keyedBy: Key.self)
                for (key, value) in pairs { try container.encode(value, forKey: Key(stringValue: key)) }
            }
        }
    }
}

extension Duration {
    /// `250ms`, `5s`, or `1500us` below a whole millisecond: what `DurationText.parse`
    /// reads, to the microsecond (a sub-millisecond timeout must not come back as `0s`).
    var routeText: String {
        let (seconds, attoseconds) = components
        let us = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        if us % 1_000_000 == 0 { return "\(us / 1_000_000)s" }
        if us % 1000 == 0 { return "\(us / 1000)ms" }
        return "\(us)us"
    }
}

extension RouteRule {
    func tree(kind: HTTPRoute.Kind) -> HTTPRoute.Tree {
        var pairs: [(String, HTTPRoute.Tree)] = []
        if let name { pairs.append(("name", .string(name))) }
        if !matches.isEmpty { pairs.append(("matches", .array(matches.map { $0.tree(kind: kind) }))) }
        if !filters.isEmpty { pairs.append(("filters", .array(filters.map(\.tree)))) }
        if !backends.isEmpty { pairs.append(("backendRefs", .array(backends.map(\.tree)))) }
        var timeouts: [(String, HTTPRoute.Tree)] = []
        if let requestTimeout { timeouts.append(("request", .string(requestTimeout.routeText))) }
        if let backendRequestTimeout { timeouts.append(("backendRequest", .string(backendRequestTimeout.routeText))) }
        if !timeouts.isEmpty { pairs.append(("timeouts", .object(timeouts))) }
        if let retry {
            var fields: [(String, HTTPRoute.Tree)] = [("attempts", .int(retry.attempts))]
            if !retry.codes.isEmpty { fields.append(("codes", .array(retry.codes.map { .int($0) }))) }
            if let backoff = retry.backoff { fields.append(("backoff", .string(backoff.routeText))) }
            pairs.append(("retry", .object(fields)))
        }
        return .object(pairs)
    }
}

extension RouteMatch {
    func tree(kind: HTTPRoute.Kind) -> HTTPRoute.Tree {
        var pairs: [(String, HTTPRoute.Tree)] = []
        if kind == .grpc {
            switch path {
            case .exact(let value):
                let parts = value.split(separator: "/")
                pairs.append(
                    (
                        "method",
                        .object([
                            ("service", .string(String(parts.first ?? ""))),
                            ("method", .string(String(parts.last ?? ""))),
                        ])
                    )
                )
            case .prefix(let value) where value != "/":
                pairs.append(("method", .object([("service", .string(String(value.dropFirst())))])))
            default: break
            }
        } else {
            let (type, value): (String, String)
            switch path {
            case .exact(let text): (type, value) = ("Exact", text)
            case .prefix(let text): (type, value) = ("PathPrefix", text)
            case .regex(let text): (type, value) = ("RegularExpression", text)
            }
            pairs.append(("path", .object([("type", .string(type)), ("value", .string(value))])))
        }
        if !headers.isEmpty { pairs.append(("headers", .array(headers.map(\.tree)))) }
        if kind == .http, !queryParams.isEmpty {
            pairs.append(
                (
                    "queryParams",
                    .array(
                        queryParams.map {
                            .object([
                                ("type", .string($0.regex ? "RegularExpression" : "Exact")), ("name", .string($0.name)),
                                ("value", .string($0.value)),
                            ])
                        }
                    )
                )
            )
        }
        if kind == .http, let method { pairs.append(("method", .string(method))) }
        return .object(pairs)
    }
}

extension HeaderMatch {
    var tree: HTTPRoute.Tree {
        switch test {
        case .exact(let value):
            return .object([("name", .string(name)), ("value", .string(value))])
        case .regex(let value):
            return .object([("type", .string("RegularExpression")), ("name", .string(name)), ("value", .string(value))])
        case .present:
            return .object([("type", .string("Present")), ("name", .string(name))])
        case .absent:
            return .object([("type", .string("Absent")), ("name", .string(name))])
        }
    }
}

extension RouteBackend {
    var tree: HTTPRoute.Tree {
        var pairs: [(String, HTTPRoute.Tree)] = [("name", .string(service))]
        if let version { pairs.append(("version", .string(version))) }
        if !labels.isEmpty {
            pairs.append(("labels", .object(labels.keys.sorted().map { ($0, .string(labels[$0] ?? "")) })))
        }
        pairs.append(("weight", .int(weight)))
        return .object(pairs)
    }
}

extension RouteFilter {
    var tree: HTTPRoute.Tree {
        func edits(_ edits: HeaderEdits) -> HTTPRoute.Tree {
            var pairs: [(String, HTTPRoute.Tree)] = []
            func list(_ items: [(String, String)]) -> HTTPRoute.Tree {
                .array(items.map { .object([("name", .string($0.0)), ("value", .string($0.1))]) })
            }
            if !edits.set.isEmpty { pairs.append(("set", list(edits.set))) }
            if !edits.add.isEmpty { pairs.append(("add", list(edits.add))) }
            if !edits.remove.isEmpty { pairs.append(("remove", .array(edits.remove.map { .string($0) }))) }
            return .object(pairs)
        }
        func path(_ rewrite: PathRewrite) -> HTTPRoute.Tree {
            switch rewrite {
            case .full(let value):
                return .object([("type", .string("ReplaceFullPath")), ("replaceFullPath", .string(value))])
            case .prefix(let value):
                return .object([("type", .string("ReplacePrefixMatch")), ("replacePrefixMatch", .string(value))])
            }
        }
        switch self {
        case .requestHeaders(let value):
            return .object([("type", .string("RequestHeaderModifier")), ("requestHeaderModifier", edits(value))])
        case .responseHeaders(let value):
            return .object([("type", .string("ResponseHeaderModifier")), ("responseHeaderModifier", edits(value))])
        case .rewrite(let rewrite):
            var pairs: [(String, HTTPRoute.Tree)] = []
            if let hostname = rewrite.hostname { pairs.append(("hostname", .string(hostname))) }
            if let rewritePath = rewrite.path { pairs.append(("path", path(rewritePath))) }
            return .object([("type", .string("URLRewrite")), ("urlRewrite", .object(pairs))])
        case .redirect(let redirect):
            var pairs: [(String, HTTPRoute.Tree)] = []
            if let scheme = redirect.scheme { pairs.append(("scheme", .string(scheme))) }
            if let hostname = redirect.hostname { pairs.append(("hostname", .string(hostname))) }
            if let port = redirect.port { pairs.append(("port", .int(port))) }
            if let redirectPath = redirect.path { pairs.append(("path", path(redirectPath))) }
            pairs.append(("statusCode", .int(redirect.statusCode)))
            return .object([("type", .string("RequestRedirect")), ("requestRedirect", .object(pairs))])
        case .mirror(let mirror):
            return .object([
                ("type", .string("RequestMirror")),
                (
                    "requestMirror",
                    .object([("backendRef", mirror.backend.tree), ("percent", .double(mirror.percent))])
                ),
            ])
        case .fault(let fault):
            var pairs: [(String, HTTPRoute.Tree)] = []
            if let delay = fault.delay {
                pairs.append(
                    (
                        "delay",
                        .object([("fixedDelay", .string(delay.routeText)), ("percent", .double(fault.delayPercent))])
                    )
                )
            }
            if fault.abortStatus != nil || fault.abortGRPCStatus != nil {
                var abort: [(String, HTTPRoute.Tree)] = []
                if let status = fault.abortStatus { abort.append(("httpStatus", .int(status))) }
                if let status = fault.abortGRPCStatus { abort.append(("grpcStatus", .int(status))) }
                abort.append(("percent", .double(fault.abortPercent)))
                pairs.append(("abort", .object(abort)))
            }
            return .object([("type", .string("Fault")), ("fault", .object(pairs))])
        }
    }
}

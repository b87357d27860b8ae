import Yams

// Reading a route from the operator's YAML or the controller's JSON (the same shape),
// every problem reported with its field path.
extension HTTPRoute {
    /// Parses a route; `name` (from the URL) wins over the body's.
    /// `storedBefore`: a route the store kept from a version that took any rule name; an
    /// invalid or repeated rule name is dropped (the rule keeps its index as its label)
    /// instead of refusing the whole route, so the controller still starts.
    public static func parse(
        _ text: String,
        name: String? = nil,
        storedBefore: Bool = false
    ) throws(ConfigErrors) -> HTTPRoute {
        let reader = ConfigReader()
        var result: HTTPRoute?
        if let root = reader.parse(text) { result = read(root, reader, name: name, storedBefore: storedBefore) }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    static func read(_ node: Node, _ reader: ConfigReader, name: String?, storedBefore: Bool = false) -> HTTPRoute? {
        // (`status` is what the API answers with, computed: read back and ignored.)
        let known: Set = ["kind", "name", "parentRefs", "hostnames", "rules", "created", "status"]
        guard let f = reader.mapping(node, "", known: known) else { return nil }
        let bodyName = f.string("name")
        guard let routeName = name ?? f.required("name", bodyName) else { return nil }
        if let name, let bodyName, bodyName != name {
            reader.fail(f.path("name"), "\"\(bodyName)\" does not match the route in the URL, \"\(name)\"")
        }
        if let reason = Names.invalidID(routeName) { reader.fail(f.path("name"), reason) }
        var route = HTTPRoute(name: routeName)
        if let kind = f.choice("kind", as: Kind.self) { route.kind = kind }
        if let created = f.int("created", range: 0...Int.max) { route.created = Int64(created) }
        for (path, item) in reader.sequence(f.node("parentRefs"), f.path("parentRefs")) {
            let known: Set = ["name", "kind", "group", "port", "sectionName", "namespace"]
            guard let parent = reader.mapping(item, path, known: known) else { continue }
            _ = parent.string("group")
            _ = parent.string("namespace")
            let kind = parent.string("kind") ?? "Service"
            guard let name = parent.required("name", parent.string("name")) else { continue }
            switch kind {
            case "Service":
                if let reason = Names.invalidServiceName(name) { reader.fail(parent.path("name"), reason) }
                if parent.node("sectionName") != nil {
                    reader.fail(parent.path("sectionName"), "a Service parent has no sections (use port)")
                }
                _ = parent.int("port", range: 1...65535)
                if !route.parents.contains(name) { route.parents.append(name) }
            case "Gateway":
                // The gateway's service name: its identity in the mesh.
                if let reason = Names.invalidServiceName(name) { reader.fail(parent.path("name"), reason) }
                if parent.node("port") != nil {
                    reader.fail(parent.path("port"), "a Gateway parent names its listener with sectionName")
                }
                let listener = parent.string("sectionName")
                if let listener, Names.invalidID(listener) != nil {
                    reader.fail(parent.path("sectionName"), "not a listener name: \"\(listener)\"")
                }
                let gateway = GatewayParent(name: name, listener: listener)
                if !route.gateways.contains(gateway) { route.gateways.append(gateway) }
            default:
                reader.fail(parent.path("kind"), "a route's parent is a Service or a Gateway, found \"\(kind)\"")
            }
        }
        if route.parents.isEmpty, route.gateways.isEmpty, f.node("parentRefs") == nil {
            reader.fail(
                f.path("parentRefs"),
                "required field is missing (the services whose callers it applies to, or gateways)"
            )
        } else if route.parents.isEmpty, route.gateways.isEmpty {
            reader.fail(f.path("parentRefs"), "needs at least one parent service or gateway")
        }
        let hostnames = reader.sequence(f.node("hostnames"), f.path("hostnames"))
        if hostnames.count > maxHostnames { reader.fail(f.path("hostnames"), "at most \(maxHostnames) hostnames") }
        for (path, item) in hostnames.prefix(maxHostnames) {
            guard let hostname = reader.string(item, path) else { continue }
            let lower = hostname.lowercased()
            if let reason = invalidHostname(lower) {
                reader.fail(path, reason)
            } else if !route.hostnames.contains(lower) {
                route.hostnames.append(lower)
            }
        }
        let rules = reader.sequence(f.node("rules"), f.path("rules"))
        if rules.count > maxRules { reader.fail(f.path("rules"), "at most \(maxRules) rules") }
        var ruleNames: Set<String> = []
        for (path, item) in rules.prefix(maxRules) {
            guard var rule = readRule(item, path, reader, kind: route.kind, storedBefore: storedBefore) else {
                continue
            }
            if let name = rule.name, !ruleNames.insert(name).inserted {
                if storedBefore {
                    rule.name = nil
                } else {
                    reader.fail(reader.join(path, "name"), "another rule of the route is named \"\(name)\"")
                }
            }
            route.rules.append(rule)
        }
        if !route.gateways.isEmpty {
            // A gateway has no parent service to send a rule without backends to.
            for (index, rule) in route.rules.enumerated() where rule.backends.isEmpty {
                let redirects = rule.filters.contains { if case .redirect = $0 { true } else { false } }
                if !redirects {
                    reader.fail(
                        "rules[\(index)].backendRefs",
                        "a route with a Gateway parent sends each rule to its backendRefs (or redirects)"
                    )
                }
            }
        }
        if reader.errors.isEmpty { checkStrings(route.tree, "", reader) }
        return route
    }

    /// Gateway API's Hostname: a DNS name (RFC 1123 labels, at most 253 characters), or
    /// `*.` and one, never an IP address.
    static func invalidHostname(_ host: String) -> String? {
        let name = host.hasPrefix("*.") ? host.dropFirst(2) : host[...]
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        let valid =
            !name.isEmpty && host.utf8.count <= 253
            && labels.allSatisfy { label in
                let bytes = label.utf8
                guard let first = bytes.first, let last = bytes.last, bytes.count <= 63 else { return false }
                return isLowerAlnum(first) && isLowerAlnum(last)
                    && bytes.allSatisfy { $0 == UInt8(ascii: "-") || isLowerAlnum($0) }
            }
        guard valid else { return "not a host name (or *. and one): \"\(host)\"" }
        if labels.allSatisfy({ $0.utf8.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) } }) {
            return "an IP address is not a hostname: \"\(host)\""
        }
        return nil
    }

    static func isLowerAlnum(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private static func readRule(
        _ node: Node,
        _ path: String,
        _ reader: ConfigReader,
        kind: Kind,
        storedBefore: Bool
    ) -> RouteRule? {
        let known: Set = ["name", "matches", "filters", "backendRefs", "timeouts", "retry"]
        guard let f = reader.mapping(node, path, known: known) else { return nil }
        var rule = RouteRule()
        if let name = f.string("name") {
            // Gateway API's SectionName: it names the rule in metric labels and logs.
            if name.utf8.count <= 63, name.utf8.allSatisfy({ $0 == UInt8(ascii: "-") || isLowerAlnum($0) }),
                let first = name.utf8.first, let last = name.utf8.last, isLowerAlnum(first), isLowerAlnum(last)
            {
                rule.name = name
            } else if !storedBefore {
                reader.fail(
                    f.path("name"),
                    "1 to 63 lower-case letters, digits or '-', starting and ending with a letter or digit"
                )
            }
        }
        let matches = reader.sequence(f.node("matches"), f.path("matches"))
        if matches.count > maxMatches { reader.fail(f.path("matches"), "at most \(maxMatches) matches") }
        for (path, item) in matches.prefix(maxMatches) {
            let match = kind == .grpc ? readGRPCMatch(item, path, reader) : readMatch(item, path, reader)
            if let match { rule.matches.append(match) }
        }
        for (path, item) in reader.sequence(f.node("filters"), f.path("filters")) {
            if let filter = readFilter(item, path, reader) { rule.filters.append(filter) }
        }
        let backends = reader.sequence(f.node("backendRefs"), f.path("backendRefs"))
        if backends.count > maxBackends { reader.fail(f.path("backendRefs"), "at most \(maxBackends) backends") }
        for (path, item) in backends.prefix(maxBackends) {
            if let backend = readBackend(item, path, reader) { rule.backends.append(backend) }
        }
        if !rule.backends.isEmpty, rule.backends.allSatisfy({ $0.weight == 0 }) {
            reader.fail(f.path("backendRefs"), "every weight is 0: no request could be sent")
        }
        if let timeouts = reader.mapping(f.node("timeouts"), f.path("timeouts"), known: ["request", "backendRequest"]) {
            for key in ["request", "backendRequest"] {
                guard let value = timeouts.duration(key)?.duration else { continue }
                if value < .microseconds(1) {
                    reader.fail(timeouts.path(key), "must be at least 1us (leave it out for the service's own timeout)")
                } else if key == "request" {
                    rule.requestTimeout = value
                } else {
                    rule.backendRequestTimeout = value
                }
            }
            if let request = rule.requestTimeout, let backend = rule.backendRequestTimeout, backend > request {
                reader.fail(timeouts.path("backendRequest"), "longer than the request timeout (\(request))")
            }
        }
        if let retry = reader.mapping(f.node("retry"), f.path("retry"), known: ["attempts", "codes", "backoff"]) {
            var policy = RouteRetry()
            if let attempts = retry.int("attempts", range: 0...10) { policy.attempts = attempts }
            for (path, item) in reader.sequence(retry.node("codes"), retry.path("codes")) {
                if let code = reader.int(item, path, range: 500...599) { policy.codes.append(code) }
            }
            policy.backoff = retry.duration("backoff")?.duration
            rule.retry = policy
        }
        let redirects = rule.filters.filter { if case .redirect = $0 { true } else { false } }.count
        let rewrites = rule.filters.filter { if case .rewrite = $0 { true } else { false } }.count
        if redirects > 0, rewrites > 0 {
            reader.fail(f.path("filters"), "RequestRedirect and URLRewrite cannot be used together")
        }
        if redirects > 0, !rule.backends.isEmpty {
            reader.fail(f.path("backendRefs"), "a rule that redirects sends nowhere: remove its backendRefs")
        }
        for filter in rule.filters {
            let replacesPrefix: Bool
            switch filter {
            case .rewrite(let rewrite):
                replacesPrefix = rewrite.path.map { if case .prefix = $0 { true } else { false } } ?? false
            case .redirect(let redirect):
                replacesPrefix = redirect.path.map { if case .prefix = $0 { true } else { false } } ?? false
            default: replacesPrefix = false
            }
            let prefixOnly = rule.matches.allSatisfy { if case .prefix = $0.path { true } else { false } }
            if replacesPrefix, !prefixOnly || rule.matches.isEmpty {
                reader.fail(f.path("filters"), "ReplacePrefixMatch needs every match to be a PathPrefix")
            }
        }
        return rule
    }

    private static func readMatch(_ node: Node, _ path: String, _ reader: ConfigReader) -> RouteMatch? {
        guard let f = reader.mapping(node, path, known: ["path", "headers", "queryParams", "method"]) else {
            return nil
        }
        var match = RouteMatch()
        if let p = reader.mapping(f.node("path"), f.path("path"), known: ["type", "value"]) {
            let value = p.string("value") ?? "/"
            switch p.string("type") ?? "PathPrefix" {
            case "Exact":
                if checkPath(value, p.path("value"), reader) { match.path = .exact(value) }
            case "PathPrefix":
                if checkPath(value, p.path("value"), reader) {
                    // A trailing slash does not change the prefix (Gateway API).
                    var prefix = value
                    while prefix.count > 1, prefix.hasSuffix("/") { prefix.removeLast() }
                    match.path = .prefix(prefix)
                }
            case "RegularExpression":
                if checkRegex(value, p.path("value"), reader) { match.path = .regex(value) }
            case let other:
                reader.fail(p.path("type"), "must be Exact, PathPrefix or RegularExpression, found \"\(other)\"")
            }
        }
        match.headers = readHeaderMatches(f.node("headers"), f.path("headers"), reader)
        for (path, item) in reader.sequence(f.node("queryParams"), f.path("queryParams")) {
            guard let q = reader.mapping(item, path, known: ["type", "name", "value"]),
                let name = q.required("name", q.string("name")), let value = q.required("value", q.string("value"))
            else { continue }
            switch q.string("type") ?? "Exact" {
            case "Exact": match.queryParams.append(QueryMatch(name: name, value: value))
            case "RegularExpression":
                if checkRegex(value, q.path("value"), reader) {
                    match.queryParams.append(QueryMatch(name: name, value: value, regex: true))
                }
            case let other: reader.fail(q.path("type"), "must be Exact or RegularExpression, found \"\(other)\"")
            }
        }
        if let method = f.string("method") {
            let valid = !method.isEmpty && method.utf8.allSatisfy { $0 >= 0x41 && $0 <= 0x5A }
            if valid {
                match.method = method
            } else {
                reader.fail(f.path("method"), "expected GET, POST, ...; found \"\(method)\"")
            }
        }
        return match
    }

    /// A GRPCRoute match: `method: {service, method}` is the request path
    /// `/<service>/<method>` (exact), or `/<service>/` (prefix) without a method.
    private static func readGRPCMatch(_ node: Node, _ path: String, _ reader: ConfigReader) -> RouteMatch? {
        guard let f = reader.mapping(node, path, known: ["method", "headers"]) else { return nil }
        var match = RouteMatch()
        if let m = reader.mapping(f.node("method"), f.path("method"), known: ["type", "service", "method"]) {
            if let type = m.string("type"), type != "Exact" {
                reader.fail(m.path("type"), "must be Exact, found \"\(type)\"")
            }
            let service = m.string("service")
            let method = m.string("method")
            for (key, value) in [("service", service), ("method", method)] {
                if let value, value.isEmpty || value.contains("/") {
                    reader.fail(m.path(key), "a gRPC \(key) name, without '/', found \"\(value)\"")
                }
            }
            switch (service, method) {
            case (let service?, let method?): match.path = .exact("/\(service)/\(method)")
            case (let service?, nil): match.path = .prefix("/\(service)")
            case (nil, _): reader.fail(m.path("service"), "required field is missing")
            }
        }
        match.headers = readHeaderMatches(f.node("headers"), f.path("headers"), reader)
        return match
    }

    static func readHeaderMatches(_ node: Node?, _ path: String, _ reader: ConfigReader) -> [HeaderMatch] {
        var matches: [HeaderMatch] = []
        for (path, item) in reader.sequence(node, path) {
            guard let h = reader.mapping(item, path, known: ["type", "name", "value"]),
                let name = h.required("name", h.string("name"))
            else { continue }
            if !isFieldName(name) { reader.fail(h.path("name"), "not a header name: \"\(name)\"") }
            let type = h.string("type") ?? "Exact"
            switch type {
            case "Exact":
                if let value = h.required("value", h.string("value")) {
                    matches.append(HeaderMatch(name: name.lowercased(), test: .exact(value)))
                }
            case "RegularExpression":
                if let value = h.required("value", h.string("value")), checkRegex(value, h.path("value"), reader) {
                    matches.append(HeaderMatch(name: name.lowercased(), test: .regex(value)))
                }
            case "Present": matches.append(HeaderMatch(name: name.lowercased(), test: .present))
            case "Absent": matches.append(HeaderMatch(name: name.lowercased(), test: .absent))
            default:
                reader.fail(h.path("type"), "must be Exact, RegularExpression, Present or Absent, found \"\(type)\"")
            }
        }
        return matches
    }

    private static func readBackend(_ node: Node, _ path: String, _ reader: ConfigReader) -> RouteBackend? {
        let known: Set = ["name", "kind", "port", "version", "labels", "weight"]
        guard let f = reader.mapping(node, path, known: known),
            let service = f.required("name", f.string("name"))
        else { return nil }
        if let reason = Names.invalidServiceName(service) { reader.fail(f.path("name"), reason) }
        if let kind = f.string("kind"), kind != "Service" {
            reader.fail(f.path("kind"), "a backend is a Service, found \"\(kind)\"")
        }
        _ = f.int("port", range: 1...65535)
        var backend = RouteBackend(service: service, version: f.string("version"))
        if let version = backend.version, !isLabelValue(version) {
            reader.fail(f.path("version"), "1 to 63 letters, digits, '-', '_' or '.', found \"\(version)\"")
        }
        if let weight = f.int("weight", range: 0...1_000_000) { backend.weight = weight }
        if let labels = f.node("labels") {
            guard let mapping = labels.mapping else {
                reader.fail(f.path("labels"), "expected a mapping of label: value")
                return backend
            }
            for (key, value) in mapping {
                guard let key = key.string,
                    let text = reader.string(value, reader.join(f.path("labels"), key))
                else { continue }
                if key == "version" {
                    reader.fail(
                        reader.join(f.path("labels"), key),
                        "the instance's version is the backend's version field"
                    )
                } else if !isLabelKey(key) {
                    reader.fail(reader.join(f.path("labels"), key), "a label key: letters, digits, '-', '_', '.', '/'")
                } else if !isLabelValue(text) {
                    reader.fail(reader.join(f.path("labels"), key), "1 to 63 letters, digits, '-', '_' or '.'")
                }
                backend.labels[key] = text
            }
        }
        return backend
    }

    private static func readFilter(_ node: Node, _ path: String, _ reader: ConfigReader) -> RouteFilter? {
        let known: Set = [
            "type", "requestHeaderModifier", "responseHeaderModifier", "urlRewrite", "requestRedirect",
            "requestMirror", "fault",
        ]
        guard let f = reader.mapping(node, path, known: known), let type = f.required("type", f.string("type")) else {
            return nil
        }
        func body(_ key: String) -> Node? {
            guard let node = f.node(key) else {
                reader.fail(f.path(key), "required field is missing (type \(type))")
                return nil
            }
            return node
        }
        switch type {
        case "RequestHeaderModifier":
            return body("requestHeaderModifier").flatMap { readEdits($0, f.path("requestHeaderModifier"), reader) }
                .map { .requestHeaders($0) }
        case "ResponseHeaderModifier":
            return body("responseHeaderModifier").flatMap { readEdits($0, f.path("responseHeaderModifier"), reader) }
                .map { .responseHeaders($0) }
        case "URLRewrite":
            guard let node = body("urlRewrite"),
                let r = reader.mapping(node, f.path("urlRewrite"), known: ["hostname", "path"])
            else { return nil }
            var rewrite = RouteFilter.URLRewrite()
            if let hostname = r.string("hostname") {
                if isAuthority(hostname) {
                    rewrite.hostname = hostname
                } else {
                    reader.fail(r.path("hostname"), "expected a host name or host:port, found \"\(hostname)\"")
                }
            }
            rewrite.path = readPathRewrite(r.node("path"), r.path("path"), reader)
            return .rewrite(rewrite)
        case "RequestRedirect":
            guard let node = body("requestRedirect"),
                let r = reader.mapping(
                    node,
                    f.path("requestRedirect"),
                    known: ["scheme", "hostname", "port", "path", "statusCode"]
                )
            else { return nil }
            var redirect = RouteFilter.Redirect()
            if let scheme = r.string("scheme") {
                if scheme == "http" || scheme == "https" {
                    redirect.scheme = scheme
                } else {
                    reader.fail(r.path("scheme"), "must be http or https, found \"\(scheme)\"")
                }
            }
            if let hostname = r.string("hostname") {
                if isAuthority(hostname), !hostname.contains(":") || hostname.hasPrefix("[") {
                    redirect.hostname = hostname
                } else {
                    reader.fail(
                        r.path("hostname"),
                        "expected a host name (the port is its own field), found \"\(hostname)\""
                    )
                }
            }
            redirect.port = r.int("port", range: 1...65535)
            redirect.path = readPathRewrite(r.node("path"), r.path("path"), reader)
            if let code = r.int("statusCode", range: 300...399) {
                if [301, 302, 303, 307, 308].contains(code) {
                    redirect.statusCode = code
                } else {
                    reader.fail(r.path("statusCode"), "must be 301, 302, 303, 307 or 308, found \(code)")
                }
            }
            return .redirect(redirect)
        case "RequestMirror":
            guard let node = body("requestMirror"),
                let m = reader.mapping(node, f.path("requestMirror"), known: ["backendRef", "percent", "fraction"])
            else { return nil }
            guard let backendNode = m.required("backendRef", m.node("backendRef")),
                let backend = readBackend(backendNode, m.path("backendRef"), reader)
            else { return nil }
            var mirror = RouteFilter.Mirror(backend: backend)
            if let percent = m.double("percent", range: 0...100) { mirror.percent = percent }
            // Gateway API's other spelling: `fraction: {numerator, denominator (100)}`.
            if let fraction = reader.mapping(
                m.node("fraction"),
                m.path("fraction"),
                known: ["numerator", "denominator"]
            ) {
                if m.node("percent") != nil { reader.fail(m.path("fraction"), "give percent or fraction, not both") }
                let denominator = fraction.int("denominator", range: 1...1_000_000) ?? 100
                if let numerator = fraction.required("numerator", fraction.int("numerator", range: 0...1_000_000)) {
                    if numerator > denominator {
                        reader.fail(
                            fraction.path("numerator"),
                            "must not be larger than the denominator (\(denominator))"
                        )
                    } else {
                        mirror.percent = Double(numerator) * 100 / Double(denominator)
                    }
                }
            }
            return .mirror(mirror)
        case "Fault":
            guard let node = body("fault"), let r = reader.mapping(node, f.path("fault"), known: ["delay", "abort"])
            else {
                return nil
            }
            var fault = RouteFilter.Fault()
            if let d = reader.mapping(r.node("delay"), r.path("delay"), known: ["fixedDelay", "percent"]) {
                fault.delay = d.required("fixedDelay", d.duration("fixedDelay"))?.duration
                if let percent = d.double("percent", range: 0...100) { fault.delayPercent = percent }
            }
            if let a = reader.mapping(r.node("abort"), r.path("abort"), known: ["httpStatus", "grpcStatus", "percent"])
            {
                fault.abortStatus = a.int("httpStatus", range: 400...599)
                fault.abortGRPCStatus = a.int("grpcStatus", range: 1...16)
                if fault.abortStatus == nil, fault.abortGRPCStatus == nil {
                    reader.fail(a.path("httpStatus"), "an abort needs httpStatus or grpcStatus")
                }
                if let percent = a.double("percent", range: 0...100) { fault.abortPercent = percent }
            }
            if fault.delay == nil, fault.abortStatus == nil, fault.abortGRPCStatus == nil {
                reader.fail(f.path("fault"), "a fault needs a delay or an abort")
            }
            return .fault(fault)
        default:
            reader.fail(
                f.path("type"),
                "must be RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror or Fault, found \"\(type)\""
            )
            return nil
        }
    }

    private static func readEdits(_ node: Node, _ path: String, _ reader: ConfigReader) -> RouteFilter.HeaderEdits? {
        guard let f = reader.mapping(node, path, known: ["set", "add", "remove"]) else { return nil }
        var edits = RouteFilter.HeaderEdits()
        func pairs(_ key: String) -> [(String, String)] {
            var out: [(String, String)] = []
            for (path, item) in reader.sequence(f.node(key), f.path(key)) {
                guard let h = reader.mapping(item, path, known: ["name", "value"]),
                    let name = h.required("name", h.string("name")), let value = h.required("value", h.string("value"))
                else { continue }
                if !isFieldName(name) { reader.fail(h.path("name"), "not a header name: \"\(name)\"") }
                if value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                    reader.fail(h.path("value"), "a header value cannot hold CR, LF or NUL")
                }
                if isReserved(name) { reader.fail(h.path("name"), "\"\(name)\" is set by the proxy, not by a route") }
                out.append((name, value))
            }
            return out
        }
        edits.set = pairs("set")
        edits.add = pairs("add")
        for (path, item) in reader.sequence(f.node("remove"), f.path("remove")) {
            guard let name = reader.string(item, path) else { continue }
            if !isFieldName(name) { reader.fail(path, "not a header name: \"\(name)\"") }
            if isReserved(name) { reader.fail(path, "\"\(name)\" is set by the proxy, not by a route") }
            edits.remove.append(name.lowercased())
        }
        return edits
    }

    private static func readPathRewrite(
        _ node: Node?,
        _ path: String,
        _ reader: ConfigReader
    ) -> RouteFilter.PathRewrite? {
        guard let f = reader.mapping(node, path, known: ["type", "replaceFullPath", "replacePrefixMatch"]) else {
            return nil
        }
        switch f.string("type") {
        case "ReplaceFullPath":
            guard let value = f.required("replaceFullPath", f.string("replaceFullPath")) else { return nil }
            return checkPath(value, f.path("replaceFullPath"), reader) ? .full(value) : nil
        case "ReplacePrefixMatch":
            guard let value = f.required("replacePrefixMatch", f.string("replacePrefixMatch")) else { return nil }
            return checkPath(value, f.path("replacePrefixMatch"), reader) ? .prefix(value) : nil
        case let other:
            reader.fail(f.path("type"), "must be ReplaceFullPath or ReplacePrefixMatch, found \"\(other ?? "")\"")
            return nil
        }
    }

    /// A path to match or write: absolute and already in `RequestPath`'s normal form, so
    /// it is compared with what the proxy compares (the normalized request path).
    private static func checkPath(_ value: String, _ path: String, _ reader: ConfigReader) -> Bool {
        guard value.hasPrefix("/"), !value.contains("?"), !value.contains("#") else {
            reader.fail(path, "an absolute path without query or fragment, found \"\(value)\"")
            return false
        }
        guard case .success(let normal) = RequestPath.normalize(value), normal == value else {
            reader.fail(path, "not in normal form (no dot segments, no '//', no needless %-escapes): \"\(value)\"")
            return false
        }
        return true
    }

    private static func checkRegex(_ value: String, _ path: String, _ reader: ConfigReader) -> Bool {
        guard value.utf8.count <= maxRegexLength else {
            reader.fail(path, "a regular expression of at most \(maxRegexLength) bytes")
            return false
        }
        do {
            _ = try Regex(value)
            return true
        } catch {
            reader.fail(path, "not a regular expression: \(error)")
            return false
        }
    }

    /// A host name, IPv4 address or bracketed IPv6 address, with an optional port: what a
    /// Host field may carry (no CR, LF, space or anything a request could be split with).
    static func isAuthority(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 255
            && text.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || "-.:[]".utf8.contains(byte)
            }
    }

    /// Kubernetes' label value syntax (and so: no ',' or '=', which name subset clusters).
    static func isLabelValue(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 63
            && text.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || "-_.".utf8.contains(byte)
            }
    }

    static func isLabelKey(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 253
            && text.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || "-_./".utf8.contains(byte)
            }
    }

    /// Every string of the route, as it will be written: none may hold a control character
    /// (C0, DEL, C1), a Unicode line or paragraph separator or a non-character. The store
    /// and the watch stream write JSON that YAML reads back, and YAML refuses or rewrites
    /// those; a value no reader can read back would stop the controller's restart and every
    /// watcher of the parent.
    static func checkStrings(_ tree: Tree, _ path: String, _ reader: ConfigReader) {
        switch tree {
        case .string(let text):
            let bad = text.unicodeScalars.first { scalar in
                let v = scalar.value
                return v < 0x20 || (v >= 0x7F && v <= 0x9F) || v == 0x2028 || v == 0x2029
                    || (v >= 0xFDD0 && v <= 0xFDEF) || v & 0xFFFE == 0xFFFE
            }
            if let bad {
                reader.fail(
                    path,
                    "holds the control or non-character U+\(String(bad.value, radix: 16, uppercase: true))"
                )
            }
        case .int, .double: break
        case .array(let items):
            for (index, item) in items.enumerated() { checkStrings(item, "\(path)[\(index)]", reader) }
        case .object(let pairs):
            for (key, value) in pairs { checkStrings(value, reader.join(path, key), reader) }
        }
    }

    /// An RFC 9110 token.
    static func isFieldName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 256
            && name.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || "!#$%&'*+-.^_`|~".utf8.contains(byte)
            }
    }

    /// Fields a route may not edit: framing, hop-by-hop, and the mesh's own.
    static func isReserved(_ name: String) -> Bool {
        let name = name.lowercased()
        return ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "keep-alive"].contains(
            name
        )
            || name.hasPrefix("x-meshwork-")
    }
}

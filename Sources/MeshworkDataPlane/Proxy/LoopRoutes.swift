import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOHTTP1

/// One parent service's routes on one event loop: the compiled table, and per rule its
/// backends (this loop's clusters), the weighted pick's state and what the rule changes.
/// Rebuilt on every route or cluster change; touched only from its loop.
final class LoopRoutes {
    let table: RouteTable
    let rules: [LoopRule]

    init(table: RouteTable, clusters: [String: LoopCluster]) {
        self.table = table
        self.rules = table.rules.map { LoopRule($0, clusters: clusters) }
    }

    /// The rule `head` selects (its target already normalized, origin-form), or nil.
    func select(_ head: HTTPRequestHead) -> (LoopRule, RouteTable.Selection)? {
        // Split on the byte: a combining mark after '?' must not hide it.
        let uri = head.uri.utf8
        let question = uri.firstIndex(of: UInt8(ascii: "?"))
        let path = Substring(question.map { uri[..<$0] } ?? uri[...])
        let query = question.map { Substring(uri[uri.index(after: $0)...]) }
        guard
            let selection = table.select(
                method: head.method.rawValue,
                path: path,
                query: query,
                header: { head.headers.first(name: $0) }
            )
        else { return nil }
        return (rules[selection.rule], selection)
    }
}

/// A rule as one loop runs it.
final class LoopRule {
    let label: String
    let rule: RouteRule
    /// This loop's cluster for each backend (nil: not known yet on this sidecar).
    let backends: [LoopCluster?]
    private let weights: [Int]
    private var current: [Int]
    private let totalWeight: Int
    let requestEdits: RouteFilter.HeaderEdits?
    let responseEdits: RouteFilter.HeaderEdits?
    let rewrite: RouteFilter.URLRewrite?
    let redirect: RouteFilter.Redirect?
    let fault: RouteFilter.Fault?
    let mirror: RouteFilter.Mirror?
    /// This loop's cluster for the mirror's backend (nil: none, or not known yet).
    let mirrorCluster: LoopCluster?
    let requestTimeout: TimeAmount?
    let backoff: TimeAmount?
    /// The rule's retry statuses, built once (not per request).
    private let retryCodes: Set<Int>

    init(_ compiled: RouteTable.Rule, clusters: [String: LoopCluster]) {
        label = compiled.label
        rule = compiled.rule
        backends = rule.backends.map { clusters[$0.clusterName] }
        weights = rule.backends.map(\.weight)
        current = Array(repeating: 0, count: rule.backends.count)
        totalWeight = weights.reduce(0, +)
        var requestEdits: RouteFilter.HeaderEdits?
        var responseEdits: RouteFilter.HeaderEdits?
        var rewrite: RouteFilter.URLRewrite?
        var redirect: RouteFilter.Redirect?
        var fault: RouteFilter.Fault?
        var mirror: RouteFilter.Mirror?
        for filter in rule.filters {
            switch filter {
            case .requestHeaders(let edits): requestEdits = edits
            case .responseHeaders(let edits): responseEdits = edits
            case .rewrite(let value): rewrite = value
            case .fault(let value): fault = value
            case .redirect(let value): redirect = value
            case .mirror(let value): mirror = value
            }
        }
        self.requestEdits = requestEdits
        self.responseEdits = responseEdits
        self.rewrite = rewrite
        self.redirect = redirect
        self.fault = fault
        self.mirror = mirror
        mirrorCluster = mirror.flatMap { clusters[$0.backend.clusterName] }
        requestTimeout = rule.requestTimeout.map(Self.amount)
        backoff = rule.retry?.backoff.map(Self.amount)
        retryCodes = Set(rule.retry?.codes ?? [])
    }

    static func amount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(
            Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
        )
    }

    /// The backend's retry policy with the rule's changes: its attempts and statuses, and
    /// its per-try (`backendRequest`) timeout. Budget, idempotency rules and the other
    /// conditions stay the service's.
    /// Whether the rule says anything about retries (attempts, codes or a per-try timeout).
    var setsRetries: Bool { rule.retry != nil || rule.backendRequestTimeout != nil }

    func retries(over policy: RetryPolicy) -> RetryPolicy {
        var policy = policy
        if let retry = rule.retry {
            policy.attempts = retry.attempts
            if !retryCodes.isEmpty { policy.statusCodes = retryCodes }
        }
        if let perTry = rule.backendRequestTimeout { policy.perTryTimeout = perTry }
        return policy
    }

    /// The backend for the next request: smooth weighted round robin (nginx's), so each
    /// window of `totalWeight` picks on this loop follows the weights exactly (a 95/5 split
    /// sends 5 of every 100). nil: the rule names no backend (the parent itself).
    func pickBackend() -> Int? {
        guard !weights.isEmpty, totalWeight > 0 else { return nil }
        var best = 0
        for index in weights.indices {
            current[index] += weights[index]
            if current[index] > current[best] { best = index }
        }
        current[best] -= totalWeight
        return best
    }

    /// Whether this request gets the fault's abort (or delay): exactly `percent` of the
    /// rule's requests on this loop, spread evenly (error diffusion, not a coin toss), so a
    /// 10% abort fails 1 request in 10 and a test of it is not a matter of luck.
    func takesAbort(_ percent: Double) -> Bool { Self.spread(percent, &abortCredit) }
    func takesDelay(_ percent: Double) -> Bool { Self.spread(percent, &delayCredit) }
    func takesMirror(_ percent: Double) -> Bool { Self.spread(percent, &mirrorCredit) }

    private var abortCredit = 0.0
    private var delayCredit = 0.0
    private var mirrorCredit = 0.0

    private static func spread(_ percent: Double, _ credit: inout Double) -> Bool {
        credit += min(100, max(0, percent))
        guard credit >= 100 else { return false }
        credit -= 100
        return true
    }

    /// The request's target and host as the rule rewrites them (its header edits go on the
    /// head as it leaves, after the caller's hop-by-hop fields are gone: see `editRequest`).
    func rewrite(_ head: inout HTTPRequestHead, matchedPrefix: Int) {
        guard let rewrite else { return }
        if let hostname = rewrite.hostname { head.headers.replaceOrAdd(name: "host", value: hostname) }
        if let path = rewrite.path { head.uri = Self.rewritten(head.uri, path, matchedPrefix: matchedPrefix) }
    }

    /// `uri` (path and query) with its path replaced whole, or the part the rule's prefix
    /// matched (`matchedPrefix` bytes) replaced; the query kept.
    static func rewritten(_ uri: String, _ rewrite: RouteFilter.PathRewrite, matchedPrefix: Int) -> String {
        switch rewrite {
        case .full(let path):
            let bytes = uri.utf8
            let query = bytes.firstIndex(of: UInt8(ascii: "?")).map { Substring(bytes[$0...]) } ?? ""
            return path + query
        case .prefix(let replacement):
            var tail = Substring(uri.utf8.dropFirst(matchedPrefix))
            // `/api` -> `/`: `/api/x` becomes `/x`, not `//x`.
            if replacement.utf8.last == UInt8(ascii: "/"), tail.utf8.first == UInt8(ascii: "/") {
                tail = Substring(tail.utf8.dropFirst())
            }
            return replacement + tail
        }
    }

    /// Where the rule's redirect sends the request: `Location`'s value. The scheme, host
    /// and port default to the request's (a changed scheme without a port drops the port:
    /// the scheme's own), the path to the request's, the query is kept.
    func location(_ head: HTTPRequestHead, matchedPrefix: Int) -> String? {
        guard let redirect else { return nil }
        let authority = head.headers.first(name: "host") ?? ""
        var host = authority
        var port: String?
        if let colon = authority.utf8.lastIndex(of: UInt8(ascii: ":")), !authority.hasSuffix("]") {
            host = String(authority[..<colon])
            port = String(authority[authority.index(after: colon)...])
        }
        if let hostname = redirect.hostname { host = hostname }
        if redirect.scheme != nil { port = nil }
        if let wanted = redirect.port { port = String(wanted) }
        let scheme = redirect.scheme ?? "http"
        if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") { port = nil }
        let target = redirect.path.map { Self.rewritten(head.uri, $0, matchedPrefix: matchedPrefix) } ?? head.uri
        return "\(scheme)://\(host)\(port.map { ":" + $0 } ?? "")\(target)"
    }

    /// The rule's request header changes, on the head as it goes upstream.
    func editRequest(_ headers: inout HTTPHeaders) {
        if let requestEdits { Self.apply(requestEdits, to: &headers) }
    }

    static func apply(_ edits: RouteFilter.HeaderEdits, to headers: inout HTTPHeaders) {
        for name in edits.remove { headers.remove(name: name) }
        for (name, value) in edits.set { headers.replaceOrAdd(name: name, value: value) }
        for (name, value) in edits.add { headers.add(name: name, value: value) }
    }
}

/// A gateway listener's pushed routes on one event loop, tiered by hostname as Gateway
/// API orders them: the routes naming the request's exact host, then those whose wildcard
/// (`*.example.com`) covers it, the longest suffix first, then those with no hostnames.
/// A tier decides when one of its rules matches; otherwise the next is asked. Each tier is
/// a `LoopRoutes` (its own compiled table), so matching stays a few hash lookups.
final class LoopGatewayRoutes {
    private let exact: [String: LoopRoutes]
    /// (`.example.com`, its routes), longest suffix first.
    private let wildcards: [(suffix: String, routes: LoopRoutes)]
    private let any: LoopRoutes?

    /// nil when no route applies to the listener.
    init?(gateway: String, listener: String, routes: [HTTPRoute], clusters: [String: LoopCluster]) {
        let attached = routes.filter { $0.attaches(gateway: gateway, listener: listener) }
        guard !attached.isEmpty else { return nil }
        var byHost: [String: [HTTPRoute]] = [:]
        var anyHost: [HTTPRoute] = []
        for route in attached {
            if route.hostnames.isEmpty { anyHost.append(route) }
            for hostname in route.hostnames { byHost[hostname, default: []].append(route) }
        }
        func compile(_ routes: [HTTPRoute]) -> LoopRoutes? {
            let table = RouteTable(routes: routes)
            return table.isEmpty ? nil : LoopRoutes(table: table, clusters: clusters)
        }
        var exact: [String: LoopRoutes] = [:]
        var wildcards: [(suffix: String, routes: LoopRoutes)] = []
        for (hostname, routes) in byHost {
            guard let compiled = compile(routes) else { continue }
            if hostname.hasPrefix("*.") {
                wildcards.append((String(hostname.dropFirst()), compiled))
            } else {
                exact[hostname] = compiled
            }
        }
        self.exact = exact
        self.wildcards = wildcards.sorted { ($0.suffix.utf8.count, $0.suffix) > ($1.suffix.utf8.count, $1.suffix) }
        any = compile(anyHost)
    }

    /// The rule `head` selects at this listener (`host`: the request's, lower case, no
    /// port), or nil: the listener's own configured routes decide.
    func select(_ head: HTTPRequestHead, host: String?) -> (LoopRule, RouteTable.Selection)? {
        if let host {
            if let routes = exact[host], let selected = routes.select(head) { return selected }
            for (suffix, routes) in wildcards where host.hasSuffix(suffix) && host.utf8.count > suffix.utf8.count {
                if let selected = routes.select(head) { return selected }
            }
        }
        return any?.select(head)
    }
}

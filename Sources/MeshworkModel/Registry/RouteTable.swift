/// The routes of one parent service compiled for matching: which rule a request selects,
/// with Gateway API's precedence, in a few hash lookups whatever the number of routes.
///
/// Precedence (Gateway API, HTTPRoute "Matching precedence"), with the place of regular
/// expressions, which Gateway API leaves to implementations, fixed here:
/// 1. an `Exact` path, then a `RegularExpression` path (in precedence order below), then
///    the longest `PathPrefix` (by characters; prefixes match whole segments);
/// 2. among matches of the same path: one with a method, then the most header matches,
///    then the most query matches;
/// 3. then the oldest route (`created`), then the route's name, then rule order, then match
///    order.
///
/// Exact paths and prefixes are found by hash of the request's path (and of each of its
/// segment prefixes), so 1,000 routes cost what 1 does; regular expressions are tried in
/// order after the exact paths, and only for tables that have them.
public struct RouteTable: Sendable {
    /// A rule of the table, in the order of `rules`.
    public struct Rule: Sendable {
        public let route: String
        public let rule: RouteRule
        /// `route/rule-name` or `route/<index>`: what metrics, logs and taps call it.
        public let label: String
    }

    /// What a request selected: the rule, and how much of the path its match consumed (a
    /// prefix's length, for `ReplacePrefixMatch`).
    public struct Selection: Sendable, Hashable {
        public let rule: Int
        public let matchedPrefix: Int
    }

    struct Candidate: Sendable {
        let rule: Int
        let path: String
        let method: String?
        let headers: [CompiledHeader]
        let query: [CompiledQuery]
        let regex: CompiledRegex?
    }

    enum CompiledHeader: Sendable {
        case exact(String, String)
        case regex(String, CompiledRegex)
        case present(String)
        case absent(String)
    }

    struct CompiledQuery: Sendable {
        let name: String
        let value: String
        let regex: CompiledRegex?
    }

    /// A compiled expression that matches whole strings.
    struct CompiledRegex: @unchecked Sendable {
        // Regex is not Sendable; a table is built once and only read afterwards.
        let regex: Regex<AnyRegexOutput>
        init?(_ text: String) {
            guard let regex = try? Regex(text) else { return nil }
            // Scalars, not graphemes: '/' followed by a combining mark is still a '/'.
            self.regex = regex.matchingSemantics(.unicodeScalar)
        }
        func matches(_ text: Substring) -> Bool {
            (try? regex.wholeMatch(in: text)) != nil
        }
    }

    public private(set) var rules: [Rule] = []
    private var exact: [UInt64: [Candidate]] = [:]
    private var prefixes: [UInt64: [Candidate]] = [:]
    /// Regular-expression paths whose literal start holds a whole first segment
    /// (`/orders/[0-9]+` starts `/orders/`), by that segment's hash; the others in
    /// `regexes`. Each entry is (its precedence position, its literal start, the candidate).
    private var regexesBySegment: [UInt64: [RegexEntry]] = [:]
    private var regexes: [RegexEntry] = []
    private var hasRegexes = false

    struct RegexEntry: Sendable {
        let order: Int
        let literal: String
        let candidate: Candidate
    }

    public var isEmpty: Bool { rules.isEmpty }

    /// The table of `parent`: the rules of every route that names it.
    public init(parent: String, routes: some Sequence<HTTPRoute>) {
        self.init(routes: routes.filter { $0.parents.contains(parent) })
    }

    /// The rules of `routes` (a gateway listener's, for one hostname).
    public init(routes: some Sequence<HTTPRoute>) {
        let ordered = routes.sorted {
            ($0.created, $0.name) < ($1.created, $1.name)
        }
        var candidates: [(Candidate, kind: Int)] = []
        for route in ordered {
            for (ruleIndex, rule) in route.rules.enumerated() {
                let index = rules.count
                rules.append(
                    Rule(route: route.name, rule: rule, label: "\(route.name)/\(rule.name ?? String(ruleIndex))")
                )
                let matches = rule.matches.isEmpty ? [RouteMatch()] : rule.matches
                for match in matches {
                    // An expression that does not compile (the parser refuses them) drops the
                    // whole match, never just its condition.
                    var compiles = true
                    let headers = match.headers.map { header -> CompiledHeader in
                        switch header.test {
                        case .exact(let value): return .exact(header.name, value)
                        case .regex(let value):
                            guard let regex = CompiledRegex(value) else {
                                compiles = false
                                return .present(header.name)
                            }
                            return .regex(header.name, regex)
                        case .present: return .present(header.name)
                        case .absent: return .absent(header.name)
                        }
                    }
                    let query = match.queryParams.map { param -> CompiledQuery in
                        let regex = param.regex ? CompiledRegex(param.value) : nil
                        if param.regex, regex == nil { compiles = false }
                        return CompiledQuery(name: param.name, value: param.value, regex: regex)
                    }
                    guard compiles else { continue }
                    // Bucket 0: exact paths, 1: regular expressions, 2: prefixes.
                    let (bucket, text, regex): (Int, String, CompiledRegex?)
                    switch match.path {
                    case .exact(let path): (bucket, text, regex) = (0, path, nil)
                    case .regex(let expression):
                        guard let compiled = CompiledRegex(expression) else { continue }
                        (bucket, text, regex) = (1, expression, compiled)
                    case .prefix(let path): (bucket, text, regex) = (2, path, nil)
                    }
                    let candidate = Candidate(
                        rule: index,
                        path: text,
                        method: match.method,
                        headers: headers,
                        query: query,
                        regex: regex
                    )
                    candidates.append((candidate, bucket))
                }
            }
        }
        // Within a bucket: method, headers, query, then the order the rules were added in
        // (route age and name, rule order), which the stable sort keeps.
        let sorted = candidates.enumerated().sorted { a, b in
            let x = a.element.0
            let y = b.element.0
            let kx = (x.method == nil ? 1 : 0, -x.headers.count, -x.query.count, a.offset)
            let ky = (y.method == nil ? 1 : 0, -y.headers.count, -y.query.count, b.offset)
            return kx < ky
        }
        for (order, (_, (candidate, kind))) in sorted.enumerated() {
            switch kind {
            case 0: exact[Self.hash(candidate.path.utf8), default: []].append(candidate)
            case 1:
                hasRegexes = true
                let literal = Self.literalStart(candidate.path)
                let entry = RegexEntry(order: order, literal: literal, candidate: candidate)
                if let segment = Self.wholeFirstSegment(of: literal) {
                    regexesBySegment[Self.hash(segment.utf8), default: []].append(entry)
                } else {
                    regexes.append(entry)
                }
            default: prefixes[Self.hash(candidate.path.utf8), default: []].append(candidate)
            }
        }
    }

    /// The rule `path` (normalized, without its query) selects, or nil (the parent's own
    /// default: all of the service). `query` is the part after `?`; `header` finds a
    /// field by lowercase name.
    public func select(
        method: String,
        path: Substring,
        query: Substring?,
        header: (String) -> String?
    ) -> Selection? {
        if rules.isEmpty { return nil }
        // Bytes, never Characters: a combining mark after a '/' must not hide the slash.
        let bytes = path.utf8
        if let bucket = exact[Self.hash(bytes)] {
            for candidate in bucket where candidate.path.utf8.elementsEqual(bytes) {
                if accepts(candidate, method, query, header) {
                    return Selection(rule: candidate.rule, matchedPrefix: 0)
                }
            }
        }
        if hasRegexes, bytes.count <= Self.maxRegexInput {
            // Only the expressions that could match: those filed under the request's first
            // segment and those with no whole first segment, merged in precedence order, each
            // run only when the path starts with its literal start.
            let filed = Self.wholeFirstSegment(of: bytes).flatMap { regexesBySegment[Self.hash($0)] } ?? []
            var a = 0
            var b = 0
            while a < filed.count || b < regexes.count {
                let entry: RegexEntry
                if b == regexes.count || (a < filed.count && filed[a].order < regexes[b].order) {
                    entry = filed[a]
                    a += 1
                } else {
                    entry = regexes[b]
                    b += 1
                }
                guard bytes.starts(with: entry.literal.utf8), entry.candidate.regex?.matches(path) == true,
                    accepts(entry.candidate, method, query, header)
                else { continue }
                return Selection(rule: entry.candidate.rule, matchedPrefix: 0)
            }
        }
        // The path itself, then each prefix ending before a '/', longest first; "/" last.
        let slash = UInt8(ascii: "/")
        var end = bytes.endIndex
        while end > bytes.startIndex {
            let prefix = bytes[bytes.startIndex..<end]
            if let bucket = prefixes[Self.hash(prefix)] {
                for candidate in bucket where candidate.path.utf8.elementsEqual(prefix) {
                    if accepts(candidate, method, query, header) {
                        return Selection(rule: candidate.rule, matchedPrefix: prefix.count == 1 ? 0 : prefix.count)
                    }
                }
            }
            if prefix.count == 1 { break }
            // The next shorter prefix on a segment boundary ("/api/" -> "/api" -> "/").
            guard let next = prefix.lastIndex(of: slash) else { break }
            end = next == bytes.startIndex ? bytes.index(after: next) : next
        }
        return nil
    }

    /// The literal characters an expression's every match starts with: up to its first
    /// metacharacter or non-ASCII byte (one a quantifier follows is optional, so it is left out); nothing when
    /// an alternation anywhere could start a match otherwise. Conservative: a shorter
    /// start only means the expression is tried more often, never less.
    static func literalStart(_ expression: String) -> String {
        let bytes = Array(expression.utf8)
        if bytes.contains(UInt8(ascii: "|")) { return "" }
        let meta = Set("\\.^$|?*+()[]{}".utf8)
        var literal: [UInt8] = []
        for byte in bytes {
            // Not past the ASCII: a quantifier after a multi-byte character would leave half
            // of it, and the path is compared by bytes.
            if byte >= 0x80 { break }
            if meta.contains(byte) {
                // A quantifier makes the character before it optional.
                if "?*+{".utf8.contains(byte), !literal.isEmpty { literal.removeLast() }
                break
            }
            literal.append(byte)
        }
        return String(decoding: literal, as: UTF8.self)
    }

    /// `/orders` of `/orders/...` (a '/' follows it); nil when the text ends within its
    /// first segment. For a request path: the path itself when it has one segment.
    static func wholeFirstSegment(of literal: String) -> Substring? {
        let bytes = literal.utf8
        guard bytes.first == UInt8(ascii: "/"), let end = bytes.dropFirst().firstIndex(of: UInt8(ascii: "/")) else {
            return nil
        }
        return Substring(bytes[..<end])
    }

    static func wholeFirstSegment(of path: Substring.UTF8View) -> Substring.UTF8View.SubSequence? {
        guard path.first == UInt8(ascii: "/") else { return nil }
        let end = path.dropFirst().firstIndex(of: UInt8(ascii: "/")) ?? path.endIndex
        return path[..<end]
    }

    /// Longer paths and values are not tried against regular expressions (a backtracking
    /// engine: bounded input bounds the time an expression can take on the event loop).
    public static let maxRegexInput = 1024

    private func accepts(
        _ candidate: Candidate,
        _ method: String,
        _ query: Substring?,
        _ header: (String) -> String?
    ) -> Bool {
        if let wanted = candidate.method, wanted != method { return false }
        for test in candidate.headers {
            switch test {
            case .exact(let name, let value): if header(name) != value { return false }
            case .regex(let name, let regex):
                guard let value = header(name), value.utf8.count <= Self.maxRegexInput, regex.matches(value[...]) else {
                    return false
                }
            case .present(let name): if header(name) == nil { return false }
            case .absent(let name): if header(name) != nil { return false }
            }
        }
        for test in candidate.query {
            guard let value = Self.queryValue(test.name, in: query) else { return false }
            if let regex = test.regex {
                if value.utf8.count > Self.maxRegexInput || !regex.matches(value) { return false }
            } else if !value.utf8.elementsEqual(test.value.utf8) {
                return false
            }
        }
        return true
    }

    /// The first value of `name` in a query string (`a=1&b=2`), compared as sent (no
    /// decoding, like Gateway API's exact match on the raw value).
    static func queryValue(_ name: String, in query: Substring?) -> Substring? {
        guard let query else { return nil }
        let bytes = query.utf8
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let end = bytes[start...].firstIndex(of: UInt8(ascii: "&")) ?? bytes.endIndex
            let pair = bytes[start..<end]
            if let equals = pair.firstIndex(of: UInt8(ascii: "=")) {
                if pair[..<equals].elementsEqual(name.utf8) {
                    return Substring(bytes[bytes.index(after: equals)..<end])
                }
            } else if !pair.isEmpty, pair.elementsEqual(name.utf8) {
                return ""
            }
            start = end == bytes.endIndex ? end : bytes.index(after: end)
        }
        return nil
    }

    /// FNV-1a over the bytes: no String to build for the lookup.
    static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }
}

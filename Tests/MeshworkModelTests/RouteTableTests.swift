import Foundation
import Testing

@testable import MeshworkModel

@Suite("Routes: parsing and Gateway API precedence")
struct RouteTableTests {
    private func route(_ yaml: String) throws -> HTTPRoute {
        try HTTPRoute.parse(yaml)
    }

    private func select(
        _ table: RouteTable,
        _ target: String,
        method: String = "GET",
        headers: [String: String] = [:]
    ) -> String? {
        // Split as the sidecar splits: on the byte.
        let bytes = target.utf8
        let question = bytes.firstIndex(of: UInt8(ascii: "?"))
        let path = Substring(question.map { bytes[..<$0] } ?? bytes[...])
        let query = question.map { Substring(bytes[bytes.index(after: $0)...]) }
        guard let selection = table.select(method: method, path: path, query: query, header: { headers[$0] }) else {
            return nil
        }
        return table.rules[selection.rule].label
    }

    @Test func exactBeatsRegexBeatsTheLongestPrefixThenMethodHeadersAndQuery() throws {
        let routes = try [
            route(
                """
                name: a
                parentRefs: [{name: orders}]
                rules:
                  - name: root
                  - name: api
                    matches: [{path: {type: PathPrefix, value: /api}}]
                  - name: api-v1
                    matches: [{path: {type: PathPrefix, value: /api/v1/}}]
                  - name: exact
                    matches: [{path: {type: Exact, value: /api/v1/items}}]
                  - name: regex
                    matches: [{path: {type: RegularExpression, value: "/api/v1/items/[0-9]+"}}]
                  - name: post
                    matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
                  - name: header
                    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "1"}]}]
                  - name: query
                    matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: debug, value: "1"}]}]
                """
            )
        ]
        let table = RouteTable(parent: "orders", routes: routes)
        #expect(select(table, "/") == "a/root")
        #expect(select(table, "/apix") == "a/root", "a prefix matches whole segments")
        #expect(select(table, "/api") == "a/api")
        #expect(select(table, "/api/") == "a/api")
        #expect(select(table, "/api/v1") == "a/api-v1", "a prefix's trailing slash does not count")
        #expect(select(table, "/api/v1/items/7") == "a/regex")
        #expect(select(table, "/api/v1/items/x") == "a/api-v1")
        #expect(select(table, "/api/v1/items") == "a/exact")
        #expect(select(table, "/api/v1/items?debug=1") == "a/exact", "the path comes before the query")
        #expect(
            select(table, "/api/x", method: "POST", headers: ["x-canary": "1"]) == "a/post",
            "method before headers"
        )
        #expect(select(table, "/api/x", headers: ["x-canary": "1"]) == "a/header")
        #expect(select(table, "/api/x?a=2&debug=1") == "a/query")
        #expect(select(table, "/api/x?debug=10") == "a/api")
        #expect(select(RouteTable(parent: "web", routes: routes), "/api") == nil, "another parent's routes")
    }

    @Test func equalMatchesGoToTheOlderRouteThenTheName() throws {
        var young = try route("name: a-young\nparentRefs: [{name: orders}]\nrules: [{matches: [{path: {value: /x}}]}]")
        var old = try route("name: z-old\nparentRefs: [{name: orders}]\nrules: [{matches: [{path: {value: /x}}]}]")
        young.created = 9
        old.created = 3
        #expect(select(RouteTable(parent: "orders", routes: [young, old]), "/x/1") == "z-old/0")
        old.created = 9
        #expect(select(RouteTable(parent: "orders", routes: [old, young]), "/x/1") == "a-young/0")
    }

    @Test func headerTestsPresentAbsentAndRegex() throws {
        let table = RouteTable(
            parent: "orders",
            routes: [
                try route(
                    """
                    name: h
                    parentRefs: [{name: orders}]
                    rules:
                      - name: regex
                        matches: [{headers: [{type: RegularExpression, name: x-user, value: "admin-[a-z]+"}]}]
                      - name: present
                        matches: [{headers: [{type: Present, name: x-debug}]}]
                      - name: absent
                        matches: [{headers: [{type: Absent, name: x-debug}, {name: x-a, value: "1"}]}]
                    """
                )
            ]
        )
        #expect(
            select(table, "/", headers: ["x-user": "admin-bob", "x-debug": "1"]) == "h/regex",
            "one header match each: the earlier rule"
        )
        #expect(select(table, "/", headers: ["x-user": "admin-", "x-debug": "1"]) == "h/present")
        #expect(select(table, "/", headers: ["x-user": "admin-bob"]) == "h/regex")
        #expect(select(table, "/", headers: ["x-user": "admin-bob2"]) == nil, "a regex matches the whole value")
        #expect(select(table, "/", headers: ["x-a": "1"]) == "h/absent")
        #expect(select(table, "/", headers: ["x-a": "1", "x-debug": ""]) == "h/present", "absent fails; present holds")
    }

    @Test func aGRPCRouteMatchesServiceAndMethod() throws {
        let table = RouteTable(
            parent: "orders",
            routes: [
                try route(
                    """
                    kind: GRPCRoute
                    name: g
                    parentRefs: [{name: orders}]
                    rules:
                      - name: get
                        matches: [{method: {service: shop.Orders, method: Get}}]
                      - name: any
                        matches: [{method: {service: shop.Orders}}]
                    """
                )
            ]
        )
        #expect(select(table, "/shop.Orders/Get", method: "POST") == "g/get")
        #expect(select(table, "/shop.Orders/List", method: "POST") == "g/any")
        #expect(select(table, "/shop.Ordersx/List", method: "POST") == nil)
    }

    @Test func aThousandRoutesSelectLikeOne() throws {
        var routes: [HTTPRoute] = []
        for index in 0..<1000 {
            routes.append(
                try route(
                    "name: r\(index)\nparentRefs: [{name: orders}]\nrules: [{matches: [{path: {value: /p\(index)}}]}]"
                )
            )
        }
        let table = RouteTable(parent: "orders", routes: routes)
        #expect(select(table, "/p999/x") == "r999/0")
        #expect(select(table, "/p0") == "r0/0")
        #expect(select(table, "/q") == nil)
    }

    /// Expressions are filed by the whole first segment their literal start holds; the
    /// index never changes which rule wins, only how many expressions a request runs.
    @Test func regexesFiledByTheirLiteralStartKeepTheirPrecedence() throws {
        #expect(RouteTable.literalStart("/orders/[0-9]+") == "/orders/")
        #expect(RouteTable.literalStart("/orders/?") == "/orders")
        #expect(RouteTable.literalStart("/ab*c") == "/a")
        #expect(RouteTable.literalStart("/a/x|/b/y") == "")
        #expect(RouteTable.literalStart("(?i)/a/b") == "")
        #expect(RouteTable.literalStart("/a\\.b/c") == "/a")
        #expect(RouteTable.literalStart("/plain/path") == "/plain/path")
        // Never past the ASCII: a quantifier after a two-byte character must not halve it.
        #expect(RouteTable.literalStart("/café?") == "/caf")
        // The older route (r0, unfiled: no whole first segment) precedes the filed r1; r2's
        // alternation can start anywhere; r3 is filed under /shop.
        let routes = try [
            "name: r0\nparentRefs: [{name: o}]\nrules: [{matches: [{path: {type: RegularExpression, value: \"/sh.*/[0-9]+\"}}]}]",
            "name: r1\nparentRefs: [{name: o}]\nrules: [{matches: [{path: {type: RegularExpression, value: \"/shop/[0-9]+\"}}]}]",
            "name: r2\nparentRefs: [{name: o}]\nrules: [{matches: [{path: {type: RegularExpression, value: \"/x/y|/shop/[a-z]+\"}}]}]",
            "name: r3\nparentRefs: [{name: o}]\nrules: [{matches: [{path: {type: RegularExpression, value: \"/shop/[a-z]+\"}}]}]",
        ].enumerated().map { index, text in
            var r = try route(text)
            r.created = Int64(index + 1)
            return r
        }
        let table = RouteTable(parent: "o", routes: routes)
        #expect(select(table, "/shop/12") == "r0/0")
        #expect(select(table, "/shop/abc") == "r2/0")
        #expect(select(table, "/x/y") == "r2/0")
        let later = RouteTable(parent: "o", routes: [routes[1], routes[3]])
        #expect(select(later, "/shop/12") == "r1/0")
        #expect(select(later, "/shop/abc") == "r3/0")
        #expect(select(later, "/shop") == nil)
        #expect(select(later, "/shopping/1") == nil)
    }

    /// A route stored by a version that took any rule name still loads (the names dropped),
    /// while the API refuses the same text.
    @Test func aStoredRouteWithOldRuleNamesStillLoads() throws {
        let text = "name: old\nparentRefs: [{name: orders}]\nrules: [{name: Canary_1}, {name: twice}, {name: twice}]"
        #expect(throws: ConfigErrors.self) { try HTTPRoute.parse(text) }
        let stored = try HTTPRoute.parse(text, storedBefore: true)
        #expect(stored.rules.map(\.name) == [nil, "twice", nil])
    }

    @Test func whatIsWrongIsRefusedWithEveryPathAndReason() throws {
        let text = """
            name: bad
            parentRefs: [{name: Orders}]
            rules:
              - matches: [{path: {type: Exact, value: "/a/../b"}, method: get}]
                filters:
                  - type: RequestHeaderModifier
                    requestHeaderModifier: {set: [{name: x-meshwork-error, value: x}]}
                  - type: RequestMirror
                    requestMirror: {backendRef: {name: orders}, fraction: {numerator: 3, denominator: 2}}
                backendRefs: [{name: orders, weight: 0}]
                timeouts: {request: 1s, backendRequest: 2s}
                retry: {codes: [404]}
              - matches: [{headers: [{type: RegularExpression, name: x, value: "("}]}]
                name: Canary
              - name: twice
              - name: twice
            """
        #expect {
            try HTTPRoute.parse(text)
        } throws: { error in
            let paths = (error as? ConfigErrors)?.errors.map(\.path) ?? []
            return Set(paths).isSuperset(of: [
                "parentRefs[0].name", "rules[0].matches[0].path.value", "rules[0].matches[0].method",
                "rules[0].filters[0].requestHeaderModifier.set[0].name",
                "rules[0].filters[1].requestMirror.fraction.numerator", "rules[1].name", "rules[3].name",
                "rules[0].backendRefs", "rules[0].timeouts.backendRequest", "rules[0].retry.codes[0]",
                "rules[1].matches[0].headers[0].value",
            ])
        }
    }

    @Test func aCombiningMarkAfterASlashOrAQuestionMarkHidesNeither() throws {
        let table = RouteTable(
            parent: "orders",
            routes: [
                try route(
                    """
                    name: m
                    parentRefs: [{name: orders}]
                    rules:
                      - name: admin
                        matches: [{path: {type: PathPrefix, value: /admin}}]
                      - name: exact
                        matches: [{path: {type: Exact, value: /login}}]
                      - name: regex
                        matches: [{path: {type: RegularExpression, value: "/r/."}}]
                    """
                )
            ]
        )
        #expect(select(table, "/admin/\u{301}x") == "m/admin")
        #expect(select(table, "/login?\u{301}") == "m/exact")
        #expect(select(table, "/r/\u{301}") == "m/regex", "a regex matches scalars, not graphemes")
        #expect(select(table, "/admin\u{301}/x") == nil, "/admin\u{301} is another segment")
    }

    @Test func valuesNoReaderCanReadBackOrThatCouldSplitAHeadAreRefused() throws {
        let cases: [(String, String)] = [
            (#"matches: [{headers: [{name: x, value: "a\x7fb"}]}]"#, "rules[0].matches[0].headers[0].value"),
            (#"name: "r\u2028""#, "rules[0].name"),
            (
                #"filters: [{type: URLRewrite, urlRewrite: {hostname: "a\r\nx: y"}}]"#,
                "rules[0].filters[0].urlRewrite.hostname"
            ),
            (#"backendRefs: [{name: orders, labels: {version: v2}}]"#, "rules[0].backendRefs[0].labels.version"),
            (#"backendRefs: [{name: orders, labels: {a: "b,c=d"}}]"#, "rules[0].backendRefs[0].labels.a"),
            (
                #"filters: [{type: Fault, fault: {abort: {httpStatus: 204}}}]"#,
                "rules[0].filters[0].fault.abort.httpStatus"
            ),
            (#"timeouts: {request: 0s}"#, "rules[0].timeouts.request"),
        ]
        for (rule, path) in cases {
            let text = "name: r\nparentRefs: [{name: orders}]\nrules:\n  - \(rule)\n"
            #expect {
                try HTTPRoute.parse(text)
            } throws: { error in
                (error as? ConfigErrors)?.errors.contains { $0.path == path } == true
            }
        }
    }

    @Test func aSubMillisecondTimeoutReadsBackAsItself() throws {
        let original = try route(
            "name: t\nparentRefs: [{name: orders}]\nrules: [{timeouts: {request: 500us, backendRequest: 250us}}]"
        )
        let encoded = try String(decoding: JSONEncoderForTests.encode(original), as: UTF8.self)
        let read = try HTTPRoute.parse(encoded)
        #expect(read.rules[0].requestTimeout == .microseconds(500))
        #expect(read.rules[0].backendRequestTimeout == .microseconds(250))
    }

    @Test func aRouteReadsBackWhatItWrites() throws {
        let original = try route(
            """
            name: round
            parentRefs: [{name: orders}]
            rules:
              - name: canary
                matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "1"}], method: GET}]
                filters:
                  - type: RequestHeaderModifier
                    requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
                  - type: Fault
                    fault: {delay: {fixedDelay: 50ms, percent: 10}, abort: {httpStatus: 503, percent: 5}}
                  - type: URLRewrite
                    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
                  - type: RequestMirror
                    requestMirror: {backendRef: {name: audit, version: v3}, fraction: {numerator: 1, denominator: 8}}
                backendRefs: [{name: orders, weight: 90}, {name: orders, version: v2, labels: {track: canary}, weight: 10}]
                timeouts: {request: 5s, backendRequest: 1500ms}
                retry: {attempts: 3, codes: [502, 503], backoff: 25ms}
            """
        )
        let encoded = try String(decoding: JSONEncoderForTests.encode(original), as: UTF8.self)
        #expect(try HTTPRoute.parse(encoded) == original)
        let redirect = try route(
            """
            name: moved
            parentRefs: [{name: orders}]
            rules:
              - matches: [{path: {type: PathPrefix, value: /old}}]
                filters:
                  - type: RequestRedirect
                    requestRedirect: {scheme: https, hostname: shop.example, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /n}, statusCode: 308}
            """
        )
        let again = try String(decoding: JSONEncoderForTests.encode(redirect), as: UTF8.self)
        #expect(try HTTPRoute.parse(again) == redirect)
        #expect(original.rules[0].backends[1].clusterName == "orders~version=v2,track=canary")
        // The mirror's backend is one the caller must know; a fraction reads as its percent.
        #expect(
            original.rules[0].targets.map(\.clusterName) == [
                "orders", "orders~version=v2,track=canary", "audit~version=v3",
            ]
        )
        #expect(original.services == ["orders", "audit"])
        if case .mirror(let mirror) = original.rules[0].filters[3] {
            #expect(mirror.percent == 12.5)
        } else {
            Issue.record("no mirror")
        }
    }

    /// A gateway parent (with or without its listener) and hostnames read back as written;
    /// they attach only where they name, and a gateway's watch key receives them.
    @Test func gatewayParentsAndHostnamesReadBackAndAttachWhereTheyName() throws {
        let shop = try route(
            """
            name: shop
            parentRefs: [{name: orders}, {kind: Gateway, name: edge, sectionName: public}, {kind: Gateway, name: inner}]
            hostnames: [Shop.Example.com, "*.example.com"]
            rules:
              - backendRefs: [{name: orders}]
            """
        )
        #expect(shop.parents == ["orders"])
        #expect(shop.gateways == [GatewayParent(name: "edge", listener: "public"), GatewayParent(name: "inner")])
        #expect(shop.hostnames == ["shop.example.com", "*.example.com"])
        let encoded = try String(decoding: JSONEncoderForTests.encode(shop), as: UTF8.self)
        #expect(try HTTPRoute.parse(encoded) == shop)
        #expect(shop.attaches(gateway: "edge", listener: "public"))
        #expect(!shop.attaches(gateway: "edge", listener: "admin"))
        #expect(shop.attaches(gateway: "inner", listener: "anything"))
        #expect(!shop.attaches(gateway: "orders", listener: "public"))
        #expect(shop.concerns([HTTPRoute.gatewayWatchKey("inner")]))
        #expect(shop.concerns(["orders"]))
        #expect(!shop.concerns(["edge", "web"]))
    }

    @Test func aGatewayRouteNeedsBackendsAndRealHostnames() throws {
        let text = """
            name: bad
            parentRefs: [{kind: Gateway, name: edge, port: 80}, {kind: Mesh, name: m}, {name: orders, sectionName: x}]
            hostnames: [10.0.0.1, "*", "a..b", "-a.example", "x.*.example", "ok.example"]
            rules:
              - matches: [{path: {type: PathPrefix, value: /a}}]
              - filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /b}}}]
            """
        #expect {
            try HTTPRoute.parse(text)
        } throws: { error in
            let paths = Set((error as? ConfigErrors)?.errors.map(\.path) ?? [])
            let expected: Set = [
                "parentRefs[0].port", "parentRefs[1].kind", "parentRefs[2].sectionName", "hostnames[0]",
                "hostnames[1]", "hostnames[2]", "hostnames[3]", "hostnames[4]", "rules[0].backendRefs",
            ]
            // The redirect rule needs no backend, and a real hostname is no error.
            return paths == expected
        }
    }

    /// Conditions: a match an older route (or an earlier rule) already takes is Conflicted,
    /// header order does not hide it; a backend without instances is unresolved; a route
    /// whose parents are all unknown is not accepted.
    @Test func conflictsAndMissingBackendsAreConditions() throws {
        var old = try route(
            """
            name: old
            parentRefs: [{name: orders}]
            rules:
              - matches: [{headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
                backendRefs: [{name: orders, version: v2}]
            """
        )
        old.created = 5
        var new = try route(
            """
            name: new
            parentRefs: [{name: orders}]
            rules:
              - matches: [{headers: [{name: b, value: "2"}, {name: a, value: "1"}]}]
              - name: all
              - name: again
                filters: [{type: RequestMirror, requestMirror: {backendRef: {name: audit}}}]
            """
        )
        new.created = 9
        var elsewhere = try route("name: elsewhere\nparentRefs: [{name: billing}]\nrules: [{}]")
        elsewhere.created = 1
        let routes = [old, new, elsewhere]
        func conditions(_ route: HTTPRoute) -> [String: RouteCondition] {
            let list = route.conditions(
                among: routes,
                serviceExists: { $0 == "orders" || $0 == "audit" },
                instances: { $0.service == "orders" && $0.version == nil ? 2 : 0 }
            )
            return Dictionary(uniqueKeysWithValues: list.map { ($0.type, $0) })
        }
        let oldStatus = conditions(old)
        #expect(oldStatus["Accepted"]?.isTrue == true && oldStatus["Conflicted"]?.isTrue == false)
        #expect(oldStatus["ResolvedRefs"]?.reason == "BackendNotFound")
        #expect(oldStatus["ResolvedRefs"]?.message.contains("orders~version=v2") == true)
        let newStatus = conditions(new)
        #expect(newStatus["Conflicted"]?.isTrue == true, "\(newStatus)")
        let message = newStatus["Conflicted"]?.message ?? ""
        #expect(message.contains("rules[0].matches[0]") && message.contains("old's rules[0]"), "\(message)")
        #expect(message.contains("rules[2].matches[0] is the same match as rules[1]'s"), "\(message)")
        #expect(
            newStatus["ResolvedRefs"]?.message.contains("rules[2].filters[0].requestMirror: no instance of audit")
                == true
        )
        // Another parent: no conflict with orders' routes, and billing is unknown.
        let other = conditions(elsewhere)
        #expect(other["Accepted"]?.reason == "NoMatchingParent" && other["Conflicted"]?.isTrue == false)
    }
}

enum JSONEncoderForTests {
    static func encode(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return try encoder.encode(value)
    }
}

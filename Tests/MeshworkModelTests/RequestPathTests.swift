import MeshworkModel
import Testing

/// `RequestPath`: the one normalization every path match and the app see. A corpus of the
/// ways a path rule is sidestepped (dot segments, encodings, repeated slashes) and of the
/// ambiguous targets that are refused.
struct RequestPathTests {
    static let normalized: [(String, String)] = [
        // Already normal: the same string back.
        ("/", "/"),
        ("/api/orders", "/api/orders"),
        ("/api/orders/", "/api/orders/"),
        ("/api/orders?id=1&x=%2F", "/api/orders?id=1&x=%2F"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a.b/c..d/e.", "/a.b/c..d/e."),
        // Dot segments (RFC 3986 5.2.4).
        ("/api/../admin", "/admin"),
        ("/api/./admin", "/api/admin"),
        ("/./admin", "/admin"),
        ("/../admin", "/admin"),
        ("/../../../admin", "/admin"),
        ("/a/b/../../admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/..", "/"),
        ("/.", "/"),
        // Repeated slashes merged.
        ("//admin", "/admin"),
        ("///admin//x///", "/admin/x/"),
        // Merged before dot segments are resolved, as an app that merges slashes reads it.
        ("/api//../admin", "/admin"),
        // Unreserved characters decoded, other encodings' hex upper-cased.
        ("/%61dmin", "/admin"),
        ("/%41%44%4D%49%4E", "/ADMIN"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2E/admin", "/admin"),
        ("/api/.%2e/admin", "/admin"),
        ("/%7euser/%5f", "/~user/_"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/%25%32%65", "/%252e"),
        // The query stays as it came, dot segments and all.
        ("/a/../b?x=/../y&z=%2e", "/b?x=/../y&z=%2e"),
        ("/a//b?", "/a/b?"),
    ]

    @Test(arguments: normalized)
    func normalizesAsRFC3986Says(_ target: String, _ expected: String) {
        #expect(RequestPath.normalize(target) == .success(expected))
    }

    static let refused: [(String, RequestPath.Failure)] = [
        ("/api%2Fadmin", .encodedSeparator),
        ("/api%2fadmin", .encodedSeparator),
        ("/api%5Cadmin", .encodedSeparator),
        ("/api%5cadmin", .encodedSeparator),
        ("/api\\admin", .backslash),
        ("/admin%00", .controlCharacter),
        ("/admin%0a", .controlCharacter),
        ("/admin%7F", .controlCharacter),
        ("/adm\u{0}in", .controlCharacter),
        ("/adm\tin", .controlCharacter),
        ("/admin%", .badPercentEncoding),
        ("/admin%4", .badPercentEncoding),
        ("/admin%zz", .badPercentEncoding),
        ("/admin%4?x=1", .badPercentEncoding),
        ("/admin#frag", .fragment),
        ("admin", .notAbsolute),
        ("", .notAbsolute),
        ("*", .notAbsolute),
        ("orders:443", .notAbsolute),
        ("/ok?x=\u{0}", .controlCharacter),
    ]

    @Test(arguments: refused)
    func refusesAmbiguousTargets(_ target: String, _ failure: RequestPath.Failure) {
        #expect(RequestPath.normalize(target) == .failure(failure))
    }

    @Test func normalizingTwiceChangesNothing() throws {
        for (target, _) in Self.normalized {
            let once = try RequestPath.normalize(target).get()
            #expect(RequestPath.normalize(once) == .success(once), "\(target)")
        }
    }

    @Test func prefixesMatchOnSegmentBoundariesOnly() {
        #expect(RequestPath.hasPrefix("/api", "/api"))
        #expect(RequestPath.hasPrefix("/api/x", "/api"))
        #expect(RequestPath.hasPrefix("/api?x", "/api"))
        #expect(!RequestPath.hasPrefix("/api-internal", "/api"))
        #expect(!RequestPath.hasPrefix("/apis", "/api"))
        #expect(!RequestPath.hasPrefix("/ap", "/api"))
        #expect(RequestPath.hasPrefix("/api/x", "/api/"))
        #expect(!RequestPath.hasPrefix("/api", "/api/"))
        #expect(RequestPath.hasPrefix("/anything", "/"))
    }

    /// Found by scripts/fuzz (path target): a combining mark right after a `/` made
    /// `/\u{301}` one Swift character, so a character-wise prefix test let
    /// `/admin/\u{301}secret` (raw UTF-8, under `/admin/` for any byte-reading router) past
    /// a `/admin/` deny. Prefixes match by bytes.
    @Test func aCombiningMarkAfterASlashDoesNotHideThePrefix() throws {
        let path = try RequestPath.normalize("/admin/\u{301}secret").get()
        #expect(RequestPath.hasPrefix(path[...], "/admin/"))
        #expect(RequestPath.hasPrefix(path[...], "/admin"))
        #expect(RequestPath.hasPrefix("/\u{301}", "/"))
        var deny = AuthorizationPolicy(name: "no-admin", target: "orders")
        deny.action = .deny
        deny.paths = ["/admin/"]
        let table = AuthorizationTable(service: "orders", policies: [deny], mesh: MeshSettings())
        guard case .denied = table.decide(source: nil, port: 0, method: "GET", path: path) else {
            Issue.record("\(path.debugDescription) passed a /admin/ deny")
            return
        }
    }
}

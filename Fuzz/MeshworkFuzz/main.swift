import Foundation
import MeshworkDNS
import MeshworkModel
import MeshworkTraffic
import NIOCore
import NIOHPACK
import NIOHTTP1

@testable import MeshworkDataPlane

// libFuzzer targets for the parsers every peer, app and operator can reach (issue 16,
// item 11). One binary, the target chosen by MESHWORK_FUZZ_TARGET: scripts/fuzz builds it
// once and runs each. Each target checks invariants as well as not crashing: a normalized
// path normalizes to itself, a rewritten head carries no hop-by-hop field, and so on.
//
// Hand-written driver: SwiftPM links an executable's entry point as `<module>_main`, so
// libFuzzer's own `main` cannot be used; this one hands libFuzzer the input callback.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum Target: String, CaseIterable {
    case dns, config, path
    case http1Head = "http1-head"
    case http2Head = "http2-head"
}

let target: Target = {
    let name = getenv("MESHWORK_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = Target(rawValue: name) else {
        print("MESHWORK_FUZZ_TARGET must be one of: \(Target.allCases.map(\.rawValue).joined(separator: ", "))")
        exit(2)
    }
    return target
}()

let zone = DNSZone(
    services: [ServiceResource(name: "orders")],
    instances: [
        InstanceResource(id: "orders-1", service: "orders", address: "127.0.0.1", port: 9001),
        InstanceResource(id: "orders-2", service: "orders", address: "::1", port: 9002),
    ],
    revision: 7
)

let authorization: AuthorizationTable = {
    var deny = AuthorizationPolicy(name: "no-admin", target: "orders")
    deny.action = .deny
    deny.paths = ["/admin"]
    var allow = AuthorizationPolicy(name: "api", target: "orders")
    allow.paths = ["/api"]
    allow.methods = ["GET", "POST"]
    return AuthorizationTable(service: "orders", policies: [deny, allow], mesh: MeshSettings())
}()

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        print("invariant broken: \(message())")
        fflush(nil)
        abort()
    }
}

/// Splits fuzz input into text fields at NUL bytes (names and values of headers).
func fields(_ bytes: [UInt8]) -> [String] {
    bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
}

func fuzzDNS(_ bytes: [UInt8]) {
    var random = MeshworkTraffic.SplitMix64(seed: 1)
    for transport in [DNSResponder.Transport.udp, .tcp] {
        if let outcome = DNSResponder.respond(to: bytes, transport: transport, zone: zone, random: &random) {
            check(outcome.bytes.count >= 12, "an answer shorter than a header")
            if transport == .udp, bytes.count <= 512 { check(outcome.bytes.count <= 4096, "a UDP answer over 4096") }
        }
        // The answer cache says what the full path says: asked twice (the second from the
        // cache when the answer was kept), the same code, ID and size bounds.
        var cache = DNSAnswerCache()
        var full = MeshworkTraffic.SplitMix64(seed: 2)
        let expected = DNSResponder.respond(to: bytes, transport: transport, zone: zone, random: &full)
        for _ in 0..<2 {
            let got = cache.respond(to: bytes, transport: transport, generation: 1, zone: { zone }, random: &random)
            check((got == nil) == (expected == nil), "the cache answers where the full path does not, or not")
            guard let got, let expected else { continue }
            check(got.code == expected.code, "cached code \(got.code) against \(expected.code)")
            check(got.bytes.prefix(2) == expected.bytes.prefix(2), "a cached answer with another ID")
            check(got.bytes.count >= 12, "a cached answer shorter than a header")
            if transport == .udp, bytes.count <= 512 { check(got.bytes.count <= 4096, "a cached UDP answer over 4096") }
        }
    }
}

func fuzzConfig(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    _ = try? SidecarConfig.load(yaml: text)
    _ = try? MeshSettings.parse(text)
    _ = try? AuthorizationPolicy.parse(text, name: "fuzz")
    _ = try? ServiceResource.parse(text, name: "fuzz")
    // A route the API accepts is one the store and every watcher can read back, unchanged
    // (a route that could not be read back would stop the controller's restart).
    if let route = try? HTTPRoute.parse(text, name: "fuzz") {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let data = try? encoder.encode(route) else { return check(false, "an accepted route does not encode") }
        let again = try? HTTPRoute.parse(String(decoding: data, as: UTF8.self))
        check(again == route, "an accepted route reads back otherwise: \(String(decoding: data, as: UTF8.self))")
        let table = RouteTable(parent: route.parents.first ?? "fuzz", routes: [route])
        _ = table.select(method: "GET", path: "/a/b", query: "x=1", header: { _ in "v" })
    }
}

/// Routes over the same normalized paths: one PathPrefix rule for /admin.
let adminRoutes: RouteTable = {
    let route = try! HTTPRoute.parse(
        "name: r\nparentRefs: [{name: orders}]\nrules: [{name: admin, matches: [{path: {value: /admin}}]}]"
    )
    return RouteTable(parent: "orders", routes: [route])
}()

/// Regular-expression routes, each its own table: the table's index of expressions by
/// their literal start must select exactly the paths the expression matches.
// (Regex is not Sendable; only the fuzzer's one thread reads it.)
nonisolated(unsafe) let regexRoutes: [(RouteTable, Regex<AnyRegexOutput>)] = [
    "/admin/[a-z]+", "/adm.*", "/admin/?x*", "/a/b?", "/(admin|x)/.*", "/x/y|/admin/.+", "/admin/[0-9]+/z",
    "/admin", "/ad\\.min/.*", "/é/.*",
].map { expression in
    let route = try! HTTPRoute.parse(
        "name: r\nparentRefs: [{name: orders}]\nrules: [{matches: [{path: {type: RegularExpression, value: '\(expression)'}}]}]"
    )
    return (RouteTable(parent: "orders", routes: [route]), try! Regex(expression).matchingSemantics(.unicodeScalar))
}

func fuzzPath(_ bytes: [UInt8]) {
    let target = String(decoding: bytes, as: UTF8.self)
    guard case .success(let path) = RequestPath.normalize(target) else { return }
    check(path.utf8.first == UInt8(ascii: "/"), "normalized \(target.debugDescription) to \(path.debugDescription)")
    // Split on the byte, as the sidecar does: a combining mark after '?' makes one
    // Character of the two, which a Character split would not see.
    let pathPart = Substring(
        path.utf8.split(separator: UInt8(ascii: "?"), maxSplits: 1, omittingEmptySubsequences: false)[0]
    )
    let bytes = Array(pathPart.utf8)
    check(
        !zip(bytes, bytes.dropFirst()).contains { $0 == 0x2F && $1 == 0x2F },
        "a repeated slash left in \(path.debugDescription)"
    )
    let segments = bytes.split(separator: 0x2F).map { String(decoding: $0, as: UTF8.self) }
    check(!segments.contains(".") && !segments.contains(".."), "a dot segment left in \(path.debugDescription)")
    // A path under /admin/ by its bytes (what the app's router reads) is under it for the
    // matcher too.
    if pathPart.utf8.starts(with: "/admin/".utf8) {
        check(RequestPath.hasPrefix(pathPart, "/admin/"), "\(path.debugDescription) escaped the /admin/ prefix")
    }
    check(RequestPath.normalize(path) == .success(path), "normalizing \(path.debugDescription) again changes it")
    // The route matcher agrees with the bytes: under /admin/ (or /admin itself) selects the
    // /admin prefix rule, anything else does not.
    let underAdmin = pathPart.utf8.starts(with: "/admin/".utf8) || pathPart.utf8.elementsEqual("/admin".utf8)
    let selected = adminRoutes.select(method: "GET", path: pathPart, query: nil) { _ in nil } != nil
    check(selected == underAdmin, "\(path.debugDescription): the /admin route \(selected ? "matched" : "missed")")
    if pathPart.utf8.count <= RouteTable.maxRegexInput {
        for (table, regex) in regexRoutes {
            let matches = (try? regex.wholeMatch(in: pathPart)) != nil
            let chosen = table.select(method: "GET", path: pathPart, query: nil) { _ in nil } != nil
            check(chosen == matches, "\(path.debugDescription): an indexed expression \(chosen ? "matched" : "missed")")
        }
    }
    let decision = authorization.decide(source: nil, port: 0, method: "GET", path: path)
    if RequestPath.hasPrefix(pathPart, "/admin") {
        if case .allowed = decision { check(false, "\(path.debugDescription) passed the /admin deny") }
    }
}

func fuzzHTTP1Head(_ bytes: [UInt8]) {
    var parts = fields(bytes)
    guard parts.count >= 2 else { return }
    let method = HTTPMethod(rawValue: parts.removeFirst())
    let uri = parts.removeFirst()
    var headers = HTTPHeaders()
    while parts.count >= 2 {
        let name = parts.removeFirst()
        let value = parts.removeFirst()
        guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }) else { continue }
        headers.add(name: name, value: value)
    }
    let head = HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
    let scan = RequestHeadScan(head)
    check(scan.bytes >= head.uri.utf8.count, "the head's size is less than its URI's")
    for (mesh, upgrade, restores) in [(true, false, false), (false, false, true), (true, true, false)] {
        let out = ProxyHandler.upstreamHead(head, scan: scan, mesh: mesh, upgrade: upgrade, restoresProtocol: restores)
        if !upgrade {
            check(
                !out.headers.contains(name: "keep-alive") && !out.headers.contains(name: "proxy-connection")
                    && !out.headers.contains(name: "connection"),
                "a hop-by-hop field went upstream"
            )
            // Only the framing the proxy writes itself: a body of unknown length, chunked.
            let framing = out.headers[canonicalForm: "transfer-encoding"]
            check(framing.isEmpty || framing == ["chunked"], "the caller's transfer-encoding went upstream: \(framing)")
            for token in scan.connectionTokens {
                // Compared exactly: HTTPHeaders' own lookup folds with 0xDF and so calls "'" and
                // "\u{07}" the same name. The fields the proxy writes itself (its framing,
                // `TE: trailers`, the caller's protocol for the peer) are its own, whatever the
                // caller's Connection named.
                guard !["transfer-encoding", "te", ProxyHandler.protoHeader].contains(token) else { continue }
                check(
                    !out.headers.contains { $0.name.lowercased() == token },
                    "\(token.debugDescription), named in Connection, went upstream"
                )
            }
            // The body's framing survives whatever Connection names: a length announced
            // (on HTTP/1, where the app reads it) is a length sent, else the body would be
            // read as the next request.
            if !mesh, let length = scan.contentLength {
                check(
                    out.headers["content-length"].contains(length),
                    "the caller's Content-Length \(length.debugDescription) did not go upstream"
                )
            }
            if let host = scan.host {
                check(out.headers.first(name: "host") == host, "the caller's Host did not go upstream")
            }
        }
        check(out.version.major == 1, "an HTTP/\(out.version.major) head upstream on HTTP/1")
    }
    _ = ProxyRoute.serviceName(head: head, domain: "mesh")
    _ = Deadlines.timeout(meshwork: scan.meshworkTimeout, grpc: scan.grpcTimeout, routeTimeout: .seconds(15))
    if let authority = ProxyRoute.absoluteURIAuthority(uri) {
        check(!authority.isEmpty || uri.contains("://"), "an authority out of nothing")
        _ = ProxyRoute.originForm(uri)
    }
    _ = HTTP2StreamUpstream.requestHeaders(head, scheme: "http")
}

/// What NIOHTTP2Handler's header block validation (on by default, and on in every
/// listener) lets through to the sidecar: names that are lowercase tokens (RFC 9113
/// 8.2.1; a leading `:` for pseudo-headers) and values without NUL, CR, LF or surrounding
/// whitespace. The conversion relies on it (HTTPHeaders traps on a non-ASCII name), so the
/// fuzzer feeds only what a real connection can deliver.
func passesNIOValidation(_ block: HPACKHeaders) -> Bool {
    func isToken(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x61...0x7A, 0x21, 0x23...0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E...0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }
    for (name, value, _) in block {
        var bytes = Substring(name).utf8
        if bytes.first == UInt8(ascii: ":") { bytes = bytes.dropFirst() }
        guard !bytes.isEmpty, bytes.allSatisfy(isToken) else { return false }
        guard !value.utf8.contains(where: { $0 == 0 || $0 == 0x0A || $0 == 0x0D }) else { return false }
        if let first = value.utf8.first, first == 0x20 || first == 0x09 { return false }
        if let last = value.utf8.last, last == 0x20 || last == 0x09 { return false }
    }
    return true
}

/// The input as an HPACK header block, decoded by swift-nio-http2 as a peer's HEADERS
/// would be, then converted as the sidecar converts it.
func fuzzHTTP2Head(_ bytes: [UInt8]) {
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
    var buffer = ByteBuffer(bytes: bytes)
    guard let block = try? decoder.decodeHeaders(from: &buffer), passesNIOValidation(block) else { return }
    for endStream in [true, false] {
        if let head = HTTP2ServerStream.requestHead(block, endStream: endStream) {
            check(!head.headers.contains(name: "connection"), "a connection field from HTTP/2")
        }
        _ = HTTP2StreamUpstream.responseHead(block, requestIsHead: !endStream, endStream: endStream)
    }
    _ = HTTP2StreamUpstream.regularHeaders(block)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    switch target {
    case .dns: fuzzDNS(bytes)
    case .config: fuzzConfig(bytes)
    case .path: fuzzPath(bytes)
    case .http1Head: fuzzHTTP1Head(bytes)
    case .http2Head: fuzzHTTP2Head(bytes)
    }
    return 0
}

typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: FuzzCallback
) -> CInt

_ = target
var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzOne))

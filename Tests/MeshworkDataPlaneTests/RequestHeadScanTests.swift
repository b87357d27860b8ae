import NIOHTTP1
import Testing

@testable import MeshworkDataPlane

/// The one pass over a request head's fields, and the head it builds for upstream.
@Suite("Request head scan")
struct RequestHeadScanTests {
    static func head(_ fields: [(String, String)], version: HTTPVersion = .http1_1) -> HTTPRequestHead {
        HTTPRequestHead(version: version, method: .POST, uri: "/orders", headers: HTTPHeaders(fields))
    }

    @Test func findsWhatTheProxyAsksWhateverTheCaseOfTheNames() {
        let scan = RequestHeadScan(
            Self.head([
                ("Host", "orders"), ("CONTENT-TYPE", "application/grpc"), ("Content-Length", "5"),
                ("X-Meshwork-Timeout", "250"), ("Grpc-Timeout", "100m"), ("x-meshwork-proto", "HTTP/1.0"),
                ("Te", " gzip , Trailers "),
            ])
        )
        #expect(scan.host == "orders")
        #expect(scan.contentType == "application/grpc")
        #expect(scan.contentLength == "5" && scan.hasBody && !scan.hasTransferEncoding)
        #expect(scan.meshworkTimeout == "250" && scan.grpcTimeout == "100m")
        #expect(scan.proto == "HTTP/1.0")
        #expect(scan.wantsTrailers)
        #expect(!scan.isUpgrade)
    }

    @Test func countsTheHeadAsItCameOverTheWire() {
        let head = Self.head([("Host", "orders"), ("X-A", "12345")])
        // "/orders" + 16 for the request line; name + value + 4 (": " and CRLF) per field.
        #expect(RequestHeadScan(head).bytes == 7 + 16 + (4 + 6 + 4) + (3 + 5 + 4))
    }

    @Test func anUpgradeNeedsBothFieldsAndAZeroLengthIsNoBody() {
        #expect(RequestHeadScan(Self.head([("Upgrade", "websocket"), ("Connection", "Upgrade")])).isUpgrade)
        #expect(!RequestHeadScan(Self.head([("Upgrade", "websocket")])).isUpgrade)
        #expect(!RequestHeadScan(Self.head([("Content-Length", "0")])).hasBody)
        #expect(RequestHeadScan(Self.head([("Transfer-Encoding", "chunked")])).hasBody)
    }

    @Test func theMeshHopKeepsEndToEndFieldsInOrderAndCarriesTheVersion() {
        let head = Self.head(
            [
                ("Host", "orders"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("X-A", "a"),
                ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("x-meshwork-proto", "forged"), ("X-B", "b"),
            ],
            version: .http1_0
        )
        let out = ProxyHandler.upstreamHead(
            head,
            scan: RequestHeadScan(head),
            mesh: true,
            upgrade: false,
            restoresProtocol: false
        )
        #expect(out.headers.map(\.name) == ["Host", "X-A", "X-B", "te", "x-meshwork-proto"])
        #expect(out.headers.first(name: "x-meshwork-proto") == "HTTP/1.0")
        #expect(out.headers.first(name: "te") == "trailers")
    }

    @Test func theFarSidecarRestoresTheCallersVersionAndDropsTheField() {
        let head = Self.head([("Host", "orders"), ("x-meshwork-proto", "HTTP/1.0")], version: .http2)
        let out = ProxyHandler.upstreamHead(
            head,
            scan: RequestHeadScan(head),
            mesh: false,
            upgrade: false,
            restoresProtocol: true
        )
        #expect(out.version == .http1_0)
        #expect(out.headers.map(\.name) == ["Host"])
    }

    @Test func aBodyOfUnknownLengthGoesChunkedToAnHTTP1AppAndAnUpgradeIsNamedAgain() {
        let chunked = Self.head([("Host", "app"), ("Transfer-Encoding", "chunked")], version: .http2)
        let out = ProxyHandler.upstreamHead(
            chunked,
            scan: RequestHeadScan(chunked),
            mesh: false,
            upgrade: false,
            restoresProtocol: false
        )
        #expect(out.version == .http1_1)
        #expect(out.headers.map(\.name) == ["Host", "transfer-encoding"])
        let upgrade = Self.head([("Host", "app"), ("Connection", "upgrade"), ("Upgrade", "websocket")])
        let upgraded = ProxyHandler.upstreamHead(
            upgrade,
            scan: RequestHeadScan(upgrade),
            mesh: false,
            upgrade: true,
            restoresProtocol: false
        )
        #expect(upgraded.headers.map(\.name) == ["Host", "connection", "upgrade"])
        #expect(upgraded.headers.first(name: "upgrade") == "websocket")
    }

    /// A `Connection` value is read token by token: empty tokens, spaces and tabs around
    /// them, and a leading or trailing comma change nothing; `upgrade` is found in any case.
    @Test func connectionTokensAreReadWhateverTheCommasAndSpaces() {
        for (value, tokens, upgrade) in [
            ("a,b", ["a", "b"], false), (" A ,\tb\t", ["a", "b"], false), (",a,,b,", ["a", "b"], false),
            ("", [], false), (",", [], false), ("keep-alive", [], false), ("Upgrade, X-Y", ["x-y"], true),
            ("close,UPGRADE", [], true),
        ] {
            var found: [String] = []
            #expect(RequestHeadScan.connectionTokens(in: value, into: &found) == upgrade, "\(value)")
            #expect(found == tokens, "\(value)")
        }
    }

    /// `Connection` may name any field, but not away the message's length or target.
    @Test func connectionCannotNameAwayTheLengthOrTheHost() {
        let head = Self.head([
            ("Host", "orders"), ("Connection", "Content-Length, HOST, x-secret"), ("Content-Length", "5"),
            ("x-secret", "1"),
        ])
        let scan = RequestHeadScan(head)
        #expect(scan.connectionTokens == ["x-secret"])
        let out = ProxyHandler.upstreamHead(head, scan: scan, mesh: false, upgrade: false, restoresProtocol: false)
        #expect(out.headers.map(\.name) == ["Host", "Content-Length"])
        var response = HTTPHeaders([
            ("Connection", "content-length, x-secret"), ("Content-Length", "3"), ("x-secret", "1"),
        ])
        ProxyHandler.removeHopByHop(&response)
        #expect(response.map(\.name) == ["Content-Length"])
    }

    @Test func aResponseWithoutHopByHopFieldsIsLeftAsItIs() {
        var headers = HTTPHeaders([("Content-Type", "text/plain"), ("X-Keep", "yes")])
        ProxyHandler.removeHopByHop(&headers)
        #expect(headers.map(\.name) == ["Content-Type", "X-Keep"])
    }
}

import Foundation
import MeshworkDemo
import MeshworkModel
import NIOCore
import Testing

/// Upstream ports and the HTTP proxy port, against the demo app over plain HTTP/1.1 and
/// h2c, driven by curl.
@Suite("Listeners end to end", .serialized)
struct ListenerTests {
    @Test func upstreamPortForwardsAndStripsHopByHopHeaders() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let result = try await Curl.get(
                sidecar.url("upstream:orders", "/headers"),
                ["-H", "Connection: keep-alive, x-drop-me", "-H", "x-drop-me: secret", "-H", "x-keep-me: yes"]
            )
            #expect(result.status == 200)
            #expect(result.header("x-served-by") == "orders-1")
            #expect(result.text.contains("x-keep-me: yes"))
            #expect(!result.text.contains("x-drop-me"))
            #expect(!result.text.lowercased().contains("connection:"))
            #expect(result.text.hasPrefix("GET /headers HTTP/1.1"))
            #expect(
                sidecar.metric(
                    #"meshwork_listener_requests_total{listener="upstream:orders",kind="upstream",class="2xx"}"#
                )
                    == 1
            )
            #expect(sidecar.metric(#"meshwork_cluster_requests_total{cluster="orders",class="2xx"}"#) == 1)
        }
    }

    /// A caller that names `Content-Length` in `Connection` (on a GET, which NIO frames
    /// only by the fields it is given) must not get its body past
    /// the proxy without a length: the app would read the body as a second request
    /// (smuggling). The length goes upstream, the body comes back whole from `/echo`, and
    /// the app sees exactly the two requests the caller sent.
    @Test func connectionNamingContentLengthCannotSmuggleARequest() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let port = sidecar.addresses["upstream:orders"]?.port ?? 0
            let script = """
                import http.client, json, sys
                smuggled = b"GET /status/418 HTTP/1.1\\r\\nHost: orders\\r\\n\\r\\n"
                conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
                conn.request("GET", "/echo", body=smuggled,
                             headers={"Host": "orders", "Connection": "content-length, host",
                                      "Content-Length": str(len(smuggled))})
                first = conn.getresponse()
                echoed = first.read()
                conn.request("GET", "/status/201", headers={"Host": "orders"})
                second = conn.getresponse()
                second.read()
                print(json.dumps({"first": first.status, "echoed": echoed == smuggled, "second": second.status}))
                """
            let result = try await Command.run(["python3", "-c", script, String(port)])
            #expect(result.exitCode == 0, "\(result.output)")
            struct Outcome: Decodable, Equatable {
                let first: Int
                let echoed: Bool
                let second: Int
            }
            let outcome = try JSONDecoder().decode(Outcome.self, from: Data(result.output.utf8))
            #expect(outcome == Outcome(first: 200, echoed: true, second: 201), "\(result.output)")
            #expect(app.requestCount == 2)
        }
    }

    /// HTTP/1.1 pipelining (the sidecar takes pipelined requests itself, NIO's pipeline
    /// handler is gone): 50 requests in one write, a POST with a body among them, and each
    /// answered in order, whole, on the one connection; then the connection still serves.
    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let port = sidecar.addresses["upstream:orders"]?.port ?? 0
            let script = """
                import http.client, json, socket, sys
                port = int(sys.argv[1])
                requests = b""
                for i in range(50):
                    if i == 25:
                        body = b"x" * 3000
                        requests += (b"POST /echo HTTP/1.1\\r\\nHost: orders\\r\\nContent-Length: "
                                     + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
                    else:
                        requests += b"GET /headers?i=%d HTTP/1.1\\r\\nHost: orders\\r\\n\\r\\n" % i
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(requests)
                reader = s.makefile("rb")
                def answer():
                    status = int(reader.readline().split()[1])
                    length, chunked = None, False
                    while True:
                        line = reader.readline().strip()
                        if not line:
                            break
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                            chunked = True
                    if chunked:
                        body = b""
                        while True:
                            size = int(reader.readline().strip().split(b";")[0], 16)
                            chunk = reader.read(size + 2)[:size]
                            if size == 0:
                                while reader.readline().strip():
                                    pass
                                break
                            body += chunk
                    else:
                        body = reader.read(length or 0)
                    return status, body
                order = []
                for i in range(50):
                    status, body = answer()
                    if i == 25:
                        order.append("echo:%d" % len(body))
                    else:
                        order.append(body.split(b"\\n")[0].decode().split(" ")[1])
                s.sendall(b"GET /status/201 HTTP/1.1\\r\\nHost: orders\\r\\n\\r\\n")
                last, _ = answer()
                print(json.dumps({"order": order, "last": last}))
                """
            let result = try await Command.run(["timeout", "30", "python3", "-c", script, String(port)])
            #expect(result.exitCode == 0, "\(result.output)")
            struct Outcome: Decodable {
                let order: [String]
                let last: Int
            }
            let outcome = try JSONDecoder().decode(Outcome.self, from: Data(result.output.utf8))
            let expected = (0..<50).map { $0 == 25 ? "echo:3000" : "/headers?i=\($0)" }
            #expect(outcome.order == expected, "\(outcome.order)")
            #expect(outcome.last == 201)
            #expect(app.requestCount == 51)
        }
    }

    /// `limits.maxConnections` per listener: past it a connection is closed at accept and
    /// counted as `connection_limit`; the open ones keep working, and a closed one frees
    /// its place.
    @Test func aListenerKeepsAtMostMaxConnectionsOpen() async throws {
        let threeConnections: (inout SidecarConfig) -> Void = { $0.limits.maxConnections = 3 }
        try await TestMesh.withAppBehindSidecar(configure: threeConnections) { app, sidecar in
            let port = sidecar.addresses["upstream:orders"]?.port ?? 0
            let script = """
                import json, socket
                def connect():
                    return socket.create_connection(("127.0.0.1", \(port)), timeout=5)
                def get(s):
                    s.sendall(b"GET / HTTP/1.1\\r\\nHost: orders\\r\\n\\r\\n")
                    return s.recv(65536).startswith(b"HTTP/1.1 200")
                def closed(s):
                    s.settimeout(2)
                    try:
                        return s.recv(1) == b""
                    except socket.timeout:
                        return False
                    except ConnectionResetError:
                        return True
                held = [connect() for _ in range(3)]
                result = {"held_answered": all(get(s) for s in held)}
                extra = connect()
                result["extra_closed"] = closed(extra)
                result["held_still_answered"] = get(held[0])
                held.pop().close()
                import time; time.sleep(0.3)
                fresh = connect()
                result["fresh_answered"] = get(fresh)
                print(json.dumps(result))
                """
            let result = try await Command.run(["python3", "-c", script])
            #expect(result.exitCode == 0, "\(result.output)")
            let fields = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Bool]
            #expect(
                fields
                    == [
                        "held_answered": true, "extra_closed": true, "held_still_answered": true,
                        "fresh_answered": true,
                    ],
                "\(result.output)"
            )
            #expect(
                sidecar.metric(
                    #"meshwork_listener_mesh_errors_total{listener="upstream:orders",kind="upstream",reason="connection_limit"}"#
                ) == 1
            )
        }
    }

    /// A cleartext connection that never says which protocol it speaks (nothing, or part
    /// of the HTTP/2 preface) is closed at `timeouts.headerRead`, on a proxy port and on the
    /// admin port: before, no timer ran until the protocol was known, and silent
    /// connections held every place of `limits.maxConnections` for good.
    @Test func aSilentConnectionIsCutAtTheHeaderDeadline() async throws {
        let short: (inout SidecarConfig) -> Void = { config in
            config.timeouts.headerRead = .seconds(1)
            config.limits.maxConnections = 2
        }
        try await TestMesh.withAppBehindSidecar(configure: short) { _, sidecar in
            let script = """
                import json, socket, sys, time
                def closed_after(port, send):
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(send)
                    start = time.monotonic()
                    s.settimeout(6)
                    try:
                        data = s.recv(1)
                    except socket.timeout:
                        return None
                    except ConnectionResetError:
                        data = b""
                    return round(time.monotonic() - start, 2) if data == b"" else None
                ports = [int(p) for p in sys.argv[1:]]
                print(json.dumps([closed_after(ports[0], b""), closed_after(ports[0], b"PRI * HTTP/2.0\\r\\n"),
                                  closed_after(ports[1], b"")]))
                """
            let result = try await Command.run([
                "python3", "-c", script, String(sidecar.port("upstream:orders")), String(sidecar.port("admin")),
            ])
            let times = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [Double?]
            #expect(times?.count == 3, "\(result.output)")
            for time in times ?? [] {
                #expect(time != nil && time! > 0.5 && time! < 3, "\(result.output)")
            }
            // The places are free again: a real request is served.
            #expect(try await Curl.get(sidecar.url("upstream:orders", "/")).status == 200)
        }
    }

    @Test func keepAliveReusesOneUpstreamConnection() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            // One curl, five requests on one downstream connection (and one loop).
            let url = sidecar.url("upstream:orders", "/")
            let result = try await Curl.run([url, url, url, url, url])
            #expect(result.exitCode == 0)
            #expect(app.requestCount == 5)
            #expect(sidecar.metric(#"meshwork_cluster_connections_total{cluster="orders"}"#) == 1)
            #expect(
                sidecar.metric(#"meshwork_listener_connections_total{listener="upstream:orders",kind="upstream"}"#) == 1
            )
        }
    }

    /// 100 calls in flight at once (one HTTP/2 connection, 100 streams, each held 300 ms by
    /// the app) need 100 connections to the HTTP/1.1 app; the next 100 on the same
    /// connection (so the same event loop and pool) find all of them idle in the pool. A cap
    /// below the concurrency seen (it was 64) closed the surplus and opened it again for the
    /// next burst: one connect and close per request at that load.
    @Test func appConnectionsStayPooledAtAConcurrencyOf100() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let (exitCode, output) = try await Command.run([
                "timeout", "30", "python3", "\(TestMesh.clients)/h2_bursts.py",
                String(sidecar.port("upstream:orders")), "/delay/300", "3", "100",
            ])
            #expect(exitCode == 0, "\(output)")
            #expect(output.contains(#"{"statuses": {"200": 300}}"#), "\(output)")
            #expect(app.requestCount == 300)
            // Every call of a burst was in flight with the others: 100 connections, then
            // the same 100 for the two bursts that followed.
            #expect(sidecar.metric(#"meshwork_cluster_connections_total{cluster="orders"}"#) == 100)
        }
    }

    @Test func httpProxyRoutesByHost() async throws {
        let orders = try await TestMesh.startApp("orders-1")
        let inventory = try await TestMesh.startApp("inventory-1")
        var config = TestMesh.baseConfig("web")
        config.httpProxy = HTTPProxyConfig(listen: TestMesh.any())
        config.clusters = [
            TestMesh.cluster("orders", .http1, [orders.address]),
            TestMesh.cluster("inventory", .http1, [inventory.address]),
        ]
        let sidecar = try await TestMesh.startSidecar(config)
        do {
            let proxy = "http://127.0.0.1:\(sidecar.port("http_proxy"))"

            for (url, served) in [
                ("http://orders/", "orders-1"), ("http://orders.mesh:8080/", "orders-1"),
                ("http://inventory.mesh/", "inventory-1"), ("http://INVENTORY/", "inventory-1"),
            ] {
                let result = try await Curl.get(url, ["-x", proxy])
                #expect(result.status == 200, "\(url)")
                #expect(result.header("x-served-by") == served, "\(url)")
            }
            // The absolute-form target becomes origin-form for the app.
            let head = try await Curl.get("http://orders.mesh/headers?x=1", ["-x", proxy])
            #expect(head.text.hasPrefix("GET /headers?x=1 HTTP/1.1"))
            #expect(head.text.contains("host: orders.mesh"))

            let unknown = try await Curl.get("http://billing/", ["-x", proxy])
            #expect(unknown.status == 404)
            #expect(unknown.header("x-meshwork-error") == "no_route")
            #expect(
                sidecar.metric(
                    #"meshwork_listener_mesh_errors_total{listener="http_proxy",kind="http_proxy",reason="no_route"}"#
                ) == 1
            )
        } catch {
            await sidecar.stop()
            await orders.stop()
            await inventory.stop()
            throw error
        }
        // Awaited: nothing of this test is left running for the next.
        await sidecar.stop()
        await orders.stop()
        await inventory.stop()
    }

    @Test func h2cClientToHTTP1App() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let result = try await Curl.get(sidecar.url("upstream:orders", "/headers"), ["--http2-prior-knowledge"])
            #expect(result.status == 200)
            #expect(result.statusLines.first?.hasPrefix("HTTP/2") == true)
            #expect(result.text.hasPrefix("GET /headers HTTP/1.1"))
        }
    }

    @Test func h2cToH2cAppKeepsTrailers() async throws {
        try await TestMesh.withAppBehindSidecar(.h2c) { _, sidecar in
            let result = try await Curl.get(sidecar.url("upstream:orders", "/trailers"), ["--http2-prior-knowledge"])
            #expect(result.status == 200)
            #expect(result.text == "with trailers\n")
            #expect(result.header("x-checksum") == "abc123")
        }
    }

    @Test func streamsLargeBodiesBothWays() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("mw-upload-\(UUID().uuidString)")
            var bytes = [UInt8](repeating: 0, count: 4 << 20)
            for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 13) }
            try Data(bytes).write(to: file)
            defer { try? FileManager.default.removeItem(at: file) }

            for framing in [[String](), ["-H", "Transfer-Encoding: chunked"]] {
                let result = try await Curl.run(
                    framing + ["--data-binary", "@\(file.path)", sidecar.url("upstream:orders", "/echo")]
                )
                #expect(result.status == 200)
                // One Bool: on a mismatch Swift Testing would diff megabytes byte by byte.
                let echoed = result.body == Data(bytes)
                #expect(echoed, "echo differs with \(framing): \(result.body.count) bytes of \(bytes.count)")
            }
            let download = try await Curl.get(sidecar.url("upstream:orders", "/bytes/\(8 << 20)"))
            #expect(download.body.count == 8 << 20)
        }
    }

    @Test func expectContinuePassesThrough() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let result = try await Curl.run(
                ["-H", "Expect: 100-continue", "--data-binary", "payload", sidecar.url("upstream:orders", "/echo")]
            )
            #expect(result.statusLines.first?.contains("100") == true, "\(result.statusLines)")
            #expect(result.status == 200)
            #expect(result.text == "payload")
        }
    }
}

extension ListenerTests {
    static let upgradeRequest = "GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"

    @Test func upgradeBecomesAByteTunnel() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let answer = try await RawClient.exchange(
                port: sidecar.port("upstream:orders"),
                send: [Self.upgradeRequest, "ping-1", "ping-2"],
                pauseBetween: .milliseconds(150),
                timeout: .seconds(1)
            )
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), "\(answer)")
            #expect(answer.lowercased().contains("upgrade: echo"))
            #expect(answer.hasSuffix("\r\n\r\nping-1ping-2"), "\(answer)")
            #expect(
                sidecar.metric(
                    #"meshwork_listener_requests_total{listener="upstream:orders",kind="upstream",class="1xx"}"#
                )
                    == 1
            )
        }
    }

    @Test func refusedUpgradeIsAnsweredAndTheConnectionCloses() async throws {
        try await TestMesh.withAppBehindSidecar { app, sidecar in
            let request = "GET / HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: nonsense\r\n\r\n"
            let answer = try await RawClient.exchange(
                port: sidecar.port("upstream:orders"),
                send: [request],
                timeout: .seconds(3)
            )
            #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(answer)")
            #expect(answer.contains("connection: close"))
            #expect(answer.hasSuffix("hello from orders-1\n"))
        }
    }

    @Test func upgradeToAnH2cClusterIsRefusedClearly() async throws {
        try await TestMesh.withAppBehindSidecar(.h2c) { app, sidecar in
            let answer = try await RawClient.exchange(
                port: sidecar.port("upstream:orders"),
                send: [Self.upgradeRequest],
                timeout: .seconds(3)
            )
            #expect(answer.hasPrefix("HTTP/1.1 502"), "\(answer)")
            #expect(answer.contains("x-meshwork-error: upgrade_unsupported"))
        }
    }
}

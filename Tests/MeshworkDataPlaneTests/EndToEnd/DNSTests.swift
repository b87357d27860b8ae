import Foundation
import Testing

/// The controller's DNS server, asked by real clients (dig from dnsutils, dnspython) over
/// real UDP and TCP sockets on 127.0.0.1, answering from the live registry.
@Suite(.serialized) struct DNSTests {
    /// `dig @127.0.0.1 -p PORT ARGS...`: its output.
    static func dig(_ port: Int, _ arguments: String...) async throws -> String {
        let result = try await Command.run(
            ["dig", "@127.0.0.1", "-p", String(port), "+time=3", "+tries=1"] + arguments
        )
        #expect(result.exitCode == 0, "dig \(arguments): \(result.output)")
        return result.output
    }

    static func lines(_ text: String) -> Set<String> {
        Set(text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
    }

    static func status(_ output: String) -> String? {
        guard let range = output.range(of: #"status: ([A-Z]+)"#, options: .regularExpression) else { return nil }
        return String(output[range].dropFirst("status: ".count))
    }

    /// dnspython's view of the answers to one question asked in several ways.
    static func probe(_ port: Int, _ arguments: [String]) async throws -> Any {
        let result = try await Command.run(
            ["python3", "\(TestMesh.clients)/dns_probe.py", String(port)] + arguments
        )
        #expect(result.exitCode == 0, "dns_probe.py: \(result.output)")
        return try JSONSerialization.jsonObject(with: Data(result.output.utf8))
    }

    func put(_ controller: ControllerProcess, instance id: String, _ body: String) async throws {
        let result = try await controller.call("PUT", "/v1/instances/\(id)", body: body)
        #expect(result.status == 200, "\(result.text)")
    }

    /// Every legal query is read whole over UDP: names up to 255 bytes on the wire (a
    /// query of ~300 bytes with EDNS0), with and without EDNS0, get an answer (NXDOMAIN for
    /// a name nobody registered), not FORMERR from a datagram cut to the receive buffer's
    /// share of a batched read.
    @Test func queriesWithNamesUpTo255BytesAreAnsweredOverUDP() async throws {
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let dns = controller.dnsPort
        #expect(dns > 0)
        let stem = [
            String(repeating: "a", count: 63), String(repeating: "b", count: 63), String(repeating: "c", count: 63),
        ]
        .joined(separator: ".")
        // 255 and 241 bytes on the wire (each label its length plus one, then the root).
        for last in [48, 34] {
            let name = stem + "." + String(repeating: "d", count: last) + ".service.mesh"
            for edns in ["+edns=0", "+noedns"] {
                let answer = try await Self.dig(dns, edns, name, "A")
                #expect(Self.status(answer) == "NXDOMAIN", "\(name.utf8.count + 2) bytes, \(edns): \(answer)")
            }
        }
        await controller.stop()
    }

    @Test func recordsFollowTheLiveRegistry() async throws {
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let dns = controller.dnsPort
        #expect(dns > 0)
        #expect(try await controller.call("PUT", "/v1/services/payments", body: "{}").status == 200)
        try await put(
            controller,
            instance: "orders-1",
            #"{"service":"orders","address":"127.0.0.1","port":7001,"zone":"a","weight":3,"ttlSeconds":0}"#
        )
        try await put(
            controller,
            instance: "orders-2",
            #"{"service":"orders","address":"127.0.0.2","port":7002,"zone":"b","ttlSeconds":0}"#
        )
        try await put(
            controller,
            instance: "orders-3",
            #"{"service":"orders","address":"127.0.0.3","port":7003,"health":"unhealthy","ttlSeconds":0}"#
        )

        // A: the serving instances only; the same over TCP.
        #expect(
            Self.lines(try await Self.dig(dns, "+short", "orders.service.mesh", "A")) == ["127.0.0.1", "127.0.0.2"]
        )
        #expect(
            Self.lines(try await Self.dig(dns, "+short", "+tcp", "orders.service.mesh", "A")) == [
                "127.0.0.1", "127.0.0.2",
            ]
        )
        let full = try await Self.dig(dns, "orders.service.mesh", "A")
        #expect(Self.status(full) == "NOERROR" && full.contains("flags: qr aa"))
        #expect(full.contains("orders.service.mesh.\t5\tIN\tA\t127.0.0.1"))

        // SRV by port name and protocol, zone-preferring priorities, glue in additional.
        #expect(
            Self.lines(try await Self.dig(dns, "+short", "_http._tcp.orders.service.b.mesh", "SRV")) == [
                "0 1 7002 orders-2.instance.mesh.", "1 3 7001 orders-1.instance.mesh.",
            ]
        )
        let additional = try await Self.dig(dns, "+noall", "+additional", "_http._tcp.orders.service.mesh", "SRV")
        #expect(additional.contains("orders-1.instance.mesh.\t5\tIN\tA\t127.0.0.1"))
        #expect(additional.contains("orders-2.instance.mesh.\t5\tIN\tA\t127.0.0.2"))
        #expect(Self.lines(try await Self.dig(dns, "+short", "orders-2.instance.mesh")) == ["127.0.0.2"])

        // Negative answers.
        let unknown = try await Self.dig(dns, "nope.service.mesh", "A")
        #expect(Self.status(unknown) == "NXDOMAIN" && unknown.contains("IN\tSOA\tns.mesh. hostmaster.mesh."))
        let empty = try await Self.dig(dns, "payments.service.mesh", "A")
        #expect(Self.status(empty) == "NOERROR" && empty.contains("ANSWER: 0"))
        #expect(Self.status(try await Self.dig(dns, "_grpc._tcp.orders.service.mesh", "SRV")) == "NXDOMAIN")
        #expect(Self.status(try await Self.dig(dns, "example.com", "A")) == "REFUSED")
        #expect(Self.status(try await Self.dig(dns, "+tcp", "example.com", "A")) == "REFUSED")

        // The registry changes: DNS follows at once.
        try await put(
            controller,
            instance: "orders-2",
            #"{"service":"orders","address":"127.0.0.2","port":7002,"zone":"b","health":"unhealthy","ttlSeconds":0}"#
        )
        #expect(Self.lines(try await Self.dig(dns, "+short", "orders.service.mesh")) == ["127.0.0.1"])
        #expect(try await controller.call("DELETE", "/v1/instances/orders-1").status == 200)
        let gone = try await Self.dig(dns, "orders.service.mesh", "A")
        #expect(Self.status(gone) == "NOERROR" && gone.contains("ANSWER: 0"))
        #expect(Self.status(try await Self.dig(dns, "orders-1.instance.mesh", "A")) == "NXDOMAIN")

        #expect(
            try await controller.metric(#"meshwork_controller_dns_queries_total{transport="udp",rcode="NXDOMAIN"}"#)
                >= 3
        )
        #expect(
            try await controller.metric(#"meshwork_controller_dns_queries_total{transport="tcp",rcode="REFUSED"}"#) == 1
        )
        await controller.stop()
    }

    @Test func largeAnswersTruncateOverUDPAndGarbageChangesNothing() async throws {
        let controller = try await ControllerProcess.start(["--dns", "127.0.0.1:0", "--dns-domain", "mesh.internal"])
        defer { controller.remove() }
        let file = controller.dataDirectory + "-big.yaml"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let documents = (1...80).map { index in
            "kind: Instance\nid: big-\(index)\nservice: big\naddress: 127.0.\(index / 200).\(index % 200 + 1)\nport: \(9000 + index)\nttlSeconds: 0\n"
        }
        try documents.joined(separator: "---\n").write(toFile: file, atomically: true, encoding: .utf8)
        let applied = try await Command.run(
            [
                CLITests.binary, "ctl", "apply", "--controller", controller.url, "--token-file",
                controller.dataDirectory + "/token", "-f", file,
            ]
        )
        #expect(applied.exitCode == 0, "\(applied.output)")

        let answers = try #require(
            try await Self.probe(
                controller.dnsPort,
                ["big.service.mesh.internal", "A", "udp", "tcp", "edns=4096", "edns=1232"]
            )
                as? [[String: Any]]
        )
        func count(_ answer: [String: Any]) -> Int { (answer["answer"] as? [Any])?.count ?? -1 }
        // UDP without EDNS: 512 bytes, truncated, as many whole records as fit.
        #expect(answers[0]["tc"] as? Bool == true && count(answers[0]) > 10 && count(answers[0]) < 80)
        // TCP: everything; EDNS0 with room: everything, our OPT back; a smaller buffer: honoured.
        #expect(answers[1]["tc"] as? Bool == false && count(answers[1]) == 80)
        #expect(answers[2]["tc"] as? Bool == false && count(answers[2]) == 80 && answers[2]["payload"] as? Int == 4096)
        #expect(answers[3]["tc"] as? Bool == true && count(answers[3]) > count(answers[0]) && count(answers[3]) < 80)
        #expect(try await controller.metric("meshwork_controller_dns_truncated_total") == 2)

        // Hundreds of malformed packets: FORMERR where a header was readable, and the
        // server answers the next good query, over UDP and TCP, with a stalled TCP client open.
        let garbage = try #require(try await Self.probe(controller.dnsPort, ["--garbage", "400"]) as? [String: Any])
        #expect((garbage["formerr"] as? Int ?? 0) >= 100)
        #expect((garbage["after"] as? [String: Any])?["rcode"] as? String == "REFUSED")  // outside mesh.internal
        #expect((garbage["after_tcp"] as? [String: Any])?["rcode"] as? String == "REFUSED")
        #expect(
            try await controller.metric(#"meshwork_controller_dns_queries_total{transport="udp",rcode="FORMERR"}"#)
                >= 100
        )
        #expect(
            Self.lines(try await Self.dig(controller.dnsPort, "+short", "big-7.instance.mesh.internal")) == [
                "127.0.0.8"
            ]
        )
        #expect(try await controller.call("GET", "/v1/services").status == 200)
        await controller.stop()
    }

    /// TCP clients are bounded: at most 32 connections from one address and 256 in all
    /// (the next is closed at accept and counted), and each query must arrive whole within 10 s of the connection
    /// or the previous answer: a client dripping a byte every half second is cut near 10 s,
    /// where an idle timer that each byte restarts would keep it forever.
    @Test func slowAndSurplusTCPClientsAreCut() async throws {
        let controller = try await ControllerProcess.start()
        defer { controller.remove() }
        let result = try await Command.run(
            ["python3", "\(TestMesh.clients)/dns_slow.py", String(controller.dnsPort), "32", "256", "16"]
        )
        #expect(result.exitCode == 0, "\(result.output)")
        let fields = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any])
        #expect(fields["source_refused"] as? Bool == true, "\(fields)")
        #expect(fields["full_refused"] as? Bool == true, "\(fields)")
        #expect(fields["earlier_open"] as? Bool == true, "\(fields)")
        #expect(fields["after_release"] as? Bool == true, "\(fields)")
        let closedAfter = try #require(fields["drip_closed_after"] as? Double, "still open after 16 s: \(fields)")
        #expect(closedAfter > 9 && closedAfter < 12, "\(fields)")
        #expect(try await controller.metric("meshwork_controller_dns_tcp_connections_refused_total") == 2)
        await controller.stop()
    }

    @Test func badDNSFlagsAreRefusedAtStart() async throws {
        for (arguments, message) in [
            (["--dns", "127.0.0.1:99999"], "--dns:"),
            (["--dns-domain", "bad domain"], "--dns-domain: expected a domain name"),
            (["--dns-ttl", "forever"], "--dns-ttl: expected a duration"),
        ] {
            let result = try await Command.run(
                [
                    CLITests.binary, "controller", "--data-dir",
                    NSTemporaryDirectory() + "mw-dnsflags-\(UUID().uuidString)", "--listen", "127.0.0.1:0",
                ] + arguments
            )
            #expect(result.exitCode != 0 && result.output.contains(message), "\(arguments): \(result.output)")
        }
    }
}

import MeshworkModel
import MeshworkTraffic
import Testing

@testable import MeshworkDNS

@Suite struct DNSAnswerCacheTests {
    let zone = DNSZone(
        services: [ServiceResource(name: "orders"), ServiceResource(name: "empty")],
        instances: [
            instance("orders", "10.0.0.1", 7001, zone: "a", weight: 3),
            instance("orders", "10.0.0.2", 7002, zone: "b"),
            instance("orders", "10.0.0.5", 7005, zone: "b"),
            instance("orders", "fd00::1", 7004, zone: "a"),
            instance("orders", "fd00::2", 7006, zone: "b"),
            instance("stock", "stock-1.example.internal", 7010),
        ],
        revision: 42
    )

    /// A record as text, for comparing answers whatever their order (SRV and CNAME by
    /// their decoded fields: their bytes hold compression pointers that depend on it).
    func records(_ records: [DecodedResponse.Record]) -> [String] {
        records.map { record in
            let data = record.srv.map { "\($0.priority) \($0.weight) \($0.port) \($0.target)" } ?? "\(record.data)"
            return "\(record.name) \(record.type) \(record.ttl) \(data)"
        }.sorted()
    }

    func cached(
        _ cache: inout DNSAnswerCache,
        _ query: [UInt8],
        transport: DNSResponder.Transport = .udp,
        generation: UInt64 = 1,
        zone: DNSZone? = nil,
        random: inout SplitMix64
    ) throws -> DNSResponder.Outcome {
        let zone = zone ?? self.zone
        return try #require(
            cache.respond(to: query, transport: transport, generation: generation, zone: { zone }, random: &random)
        )
    }

    /// Every name and type the zone answers, in the client's case, with and without EDNS,
    /// over UDP and TCP, with and without RD and CD: the answer from the cache (asked a
    /// second time, with another ID) says what the full path says, record for record.
    @Test func aCachedAnswerSaysWhatTheFullPathSays() throws {
        let names = [
            "orders.service.mesh", "ORDERS.Service.mesh", "orders.service.a.mesh", "orders.service.b.mesh",
            "_http._tcp.orders.service.mesh", "empty.service.mesh", "stock.service.mesh", "mesh",
            "orders-10-0-0-1-7001.instance.mesh", "stock-stock-1-example-internal-7010.instance.mesh",
            "nope.service.mesh", "orders.service.example", "x.y.z.w.v.u.mesh",
        ]
        let types: [DNSType] = [.a, .aaaa, .srv, .any, .soa, .cname, .ns, .axfr]
        var cache = DNSAnswerCache()
        var random = SplitMix64(seed: 1)
        var checked = 0
        for name in names {
            for type in types {
                for edns: UInt16? in [nil, 1232] {
                    for transport in DNSResponder.Transport.allCases {
                        for flags: UInt16 in [0x0100, 0x0010, 0x0000] {
                            var full = SplitMix64(seed: 2)
                            let expected = try DecodedResponse(
                                try #require(
                                    DNSResponder.respond(
                                        to: makeQuery(name, type: type, id: 7, edns: edns, flags: flags),
                                        transport: transport,
                                        zone: zone,
                                        random: &full
                                    )
                                ).bytes
                            )
                            for id: UInt16 in [0x0101, 0xBEEF] {
                                let query = makeQuery(name, type: type, id: id, edns: edns, flags: flags)
                                let got = try DecodedResponse(
                                    try cached(&cache, query, transport: transport, random: &random).bytes
                                )
                                let what = "\(name) \(type) edns \(String(describing: edns)) \(transport) \(flags)"
                                #expect(got.id == id, "\(what)")
                                #expect(got.flags == expected.flags, "\(what)")
                                #expect(got.questionName == expected.questionName, "\(what)")
                                #expect(records(got.answers) == records(expected.answers), "\(what)")
                                #expect(records(got.authority) == records(expected.authority), "\(what)")
                                #expect(records(got.additional) == records(expected.additional), "\(what)")
                                checked += 1
                            }
                        }
                    }
                }
            }
        }
        #expect(checked == names.count * types.count * 2 * 2 * 3 * 2)
        // Only NOERROR answers were kept: names that do not exist never fill the cache.
        #expect(cache.count > 0)
        var negative = DNSAnswerCache()
        for index in 0..<100 {
            _ = try cached(&negative, makeQuery("n\(index).service.mesh", type: .a), random: &random)
        }
        #expect(negative.count == 0)
    }

    @Test func cachedAddressesAreShuffledPerQuery() throws {
        let many = (1...8).map { instance("s", "10.2.0.\($0)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var cache = DNSAnswerCache()
        var random = SplitMix64(seed: 3)
        var orders = Set<[[UInt8]]>()
        var firsts = Set<[UInt8]>()
        for _ in 0..<40 {
            let outcome = try cached(&cache, makeQuery("s.service.mesh", type: .a), zone: zone, random: &random)
            let answers = try DecodedResponse(outcome.bytes).answers.map(\.data)
            #expect(answers.count == 8)
            orders.insert(answers)
            firsts.insert(answers[0])
        }
        #expect(cache.count == 1)
        #expect(orders.count > 20)
        #expect(firsts.count == 8)
    }

    /// SRV answers compress their targets against each other, so they are kept in
    /// rotations: every instance comes first in some answer.
    @Test func cachedServiceRecordsPutEveryInstanceFirstInTurn() throws {
        let many = (1...6).map { instance("s", "10.2.0.\($0)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var cache = DNSAnswerCache()
        var random = SplitMix64(seed: 4)
        var firsts = Set<UInt16>()
        for _ in 0..<60 {
            let outcome = try cached(&cache, makeQuery("s.service.mesh", type: .srv), zone: zone, random: &random)
            let decoded = try DecodedResponse(outcome.bytes)
            #expect(decoded.answers.count == 6 && decoded.additional.count == 6)
            if let port = decoded.answers.first?.srv?.port { firsts.insert(port) }
        }
        #expect(firsts == Set((1...6).map { UInt16(9000 + $0) }))
    }

    /// A new zone generation empties the cache: the next answer is the new zone's.
    @Test func aNewGenerationAnswersFromTheNewZone() throws {
        var cache = DNSAnswerCache()
        var random = SplitMix64(seed: 5)
        let query = makeQuery("orders.service.mesh", type: .a)
        let before = try DecodedResponse(try cached(&cache, query, random: &random).bytes)
        #expect(before.answers.count == 3)
        let grown = zone.updating(
            ["orders"],
            services: [ServiceResource(name: "orders")],
            instances: [instance("orders", "10.0.0.7", 7007)],
            revision: 43
        )
        let stale = try DecodedResponse(try cached(&cache, query, generation: 1, zone: grown, random: &random).bytes)
        #expect(stale.answers.count == 3)
        let after = try DecodedResponse(try cached(&cache, query, generation: 2, zone: grown, random: &random).bytes)
        #expect(after.answers.map(\.data) == [[10, 0, 0, 7]])
    }

    /// At most `capacity` answers are kept: a full cache starts again.
    @Test func theCacheIsBounded() throws {
        let many = (1...50).map { instance("s\($0)", "10.3.0.\($0)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var cache = DNSAnswerCache(capacity: 16)
        var random = SplitMix64(seed: 6)
        for index in 1...50 {
            _ = try cached(&cache, makeQuery("s\(index).service.mesh", type: .a), zone: zone, random: &random)
            #expect(cache.count <= 16)
        }
        #expect(cache.count > 0)
    }

    /// ... and at most `maxBytes` of answers.
    @Test func theCacheIsBoundedInBytes() throws {
        let many = (1...50).map { instance("s\($0)", "10.3.0.\($0)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var cache = DNSAnswerCache(capacity: 4096, maxBytes: 300)
        var random = SplitMix64(seed: 6)
        for index in 1...50 {
            let outcome = try cached(&cache, makeQuery("s\(index).service.mesh", type: .a), zone: zone, random: &random)
            #expect(outcome.bytes.count > 40)
            #expect(cache.count <= 300 / 40)
        }
    }

    /// Only the letters of the name's labels are folded: not its length bytes, not the
    /// type and class (type 65 is 'A'); a name with a compression pointer is not kept.
    @Test func theKeyFoldsTheLettersOfLabelsOnly() {
        let wire: [UInt8] = [6] + Array("ORDERS".utf8) + [4] + Array("Mesh".utf8) + [0, 0, 0x41, 0, 1]
        let folded: [UInt8] = [6] + Array("orders".utf8) + [4] + Array("mesh".utf8) + [0, 0, 0x41, 0, 1]
        #expect(DNSAnswerCache.caseFolded(wire) == folded)
        let pointer: [UInt8] = [6] + Array("orders".utf8) + [0xC0, 0x0C, 0, 1, 0, 1]
        #expect(DNSAnswerCache.caseFolded(pointer) == nil)
    }

    /// Names in an answer compress against the question as it is on the wire: a label
    /// that is not UTF-8 (one byte there, three as a replacement character) used to shift
    /// every pointer after it, so the SRV targets read back wrong.
    @Test func compressionPointsAtTheQuestionAsSentWhateverItsBytes() throws {
        var query: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label: [UInt8] in [Array("orders".utf8), Array("service".utf8), [0xFF], Array("mesh".utf8)] {
            query += [UInt8(label.count)] + label
        }
        query += [0, 0, 33, 0, 1]
        var random = SplitMix64(seed: 1)
        let outcome = try #require(DNSResponder.respond(to: query, transport: .udp, zone: zone, random: &random))
        let decoded = try DecodedResponse(outcome.bytes)
        #expect(decoded.answers.count == 5)
        for answer in decoded.answers {
            #expect(answer.srv?.target.hasSuffix(".instance.mesh") == true, "\(String(describing: answer.srv))")
        }
    }

    /// A truncated answer goes the full path every time (it is not kept).
    @Test func truncatedAnswersAreNotKept() throws {
        let many = (1...120).map { instance("big", "10.4.\($0 / 250).\($0 % 250 + 1)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var cache = DNSAnswerCache()
        var random = SplitMix64(seed: 8)
        let outcome = try cached(&cache, makeQuery("big.service.mesh", type: .srv), zone: zone, random: &random)
        #expect(outcome.truncated)
        #expect(cache.count == 0)
    }
}

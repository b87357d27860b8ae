import MeshworkModel
import MeshworkTraffic
import Testing

@testable import MeshworkDNS

/// A query as a client would send it.
func makeQuery(
    _ name: String,
    type: DNSType,
    id: UInt16 = 0x1234,
    edns: UInt16? = nil,
    flags: UInt16 = 0x0100
) -> [UInt8] {
    var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), UInt8(flags >> 8), UInt8(flags & 0xFF), 0, 1, 0, 0, 0, 0]
    bytes += [0, edns == nil ? 0 : 1]
    for label in name.split(separator: ".") {
        bytes.append(UInt8(label.utf8.count))
        bytes += Array(label.utf8)
    }
    bytes += [0, UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
    if let edns {
        bytes += [0, 0, 41, UInt8(edns >> 8), UInt8(edns & 0xFF), 0, 0, 0, 0, 0, 0]
    }
    return bytes
}

/// A response read back (enough of it to check what the server said).
struct DecodedResponse {
    struct Record {
        var name: String
        var type: DNSType
        var ttl: UInt32
        var data: [UInt8]
        /// SRV fields and target, or the CNAME target.
        var srv: (priority: UInt16, weight: UInt16, port: UInt16, target: String)?
    }

    var id: UInt16
    var flags: UInt16
    var code: UInt16 { flags & 0x0F }
    var truncated: Bool { flags & 0x0200 != 0 }
    var authoritative: Bool { flags & 0x0400 != 0 }
    var questionName: String
    var answers: [Record] = []
    var authority: [Record] = []
    var additional: [Record] = []

    init(_ bytes: [UInt8]) throws {
        id = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        let counts = (0..<4).map { Int(UInt16(bytes[4 + 2 * $0]) << 8 | UInt16(bytes[5 + 2 * $0])) }
        var cursor = DNSReader.Cursor(message: bytes, offset: 12)
        func name() throws -> String {
            try cursor.readName().map { String(decoding: $0, as: UTF8.self) }.joined(separator: ".")
        }
        questionName = counts[0] == 1 ? try name() : ""
        if counts[0] == 1 { try cursor.skip(4) }
        func record() throws -> Record {
            let owner = try name()
            let type = DNSType(rawValue: try cursor.readUInt16())
            _ = try cursor.readUInt16()
            let ttl = try cursor.readUInt32()
            let length = Int(try cursor.readUInt16())
            let start = cursor.offset
            var record = Record(name: owner, type: type, ttl: ttl, data: Array(bytes[start..<start + length]))
            if type == .srv {
                let priority = try cursor.readUInt16()
                let weight = try cursor.readUInt16()
                let port = try cursor.readUInt16()
                record.srv = (priority, weight, port, try name())
            }
            cursor.offset = start + length
            return record
        }
        answers = try (0..<counts[1]).map { _ in try record() }
        authority = try (0..<counts[2]).map { _ in try record() }
        additional = try (0..<counts[3]).map { _ in try record() }
        #expect(cursor.offset == bytes.count, "trailing bytes in the response")
    }
}

func instance(
    _ service: String,
    _ address: String,
    _ port: Int,
    zone: String? = nil,
    weight: Int = 1,
    health: InstanceHealth = .healthy
) -> InstanceResource {
    var instance = InstanceResource(
        id: InstanceResource.defaultID(service: service, address: address, port: port),
        service: service,
        address: address,
        port: port
    )
    instance.zone = zone
    instance.weight = weight
    instance.health = health
    return instance
}

func ask(
    _ zone: DNSZone,
    _ name: String,
    _ type: DNSType,
    transport: DNSResponder.Transport = .udp,
    edns: UInt16? = nil
) throws -> DecodedResponse {
    var random = SplitMix64(seed: 7)
    let outcome = try #require(
        DNSResponder.respond(
            to: makeQuery(name, type: type, edns: edns),
            transport: transport,
            zone: zone,
            random: &random
        )
    )
    return try DecodedResponse(outcome.bytes)
}

@Suite struct DNSZoneTests {
    let zone = DNSZone(
        services: [ServiceResource(name: "orders"), ServiceResource(name: "empty")],
        instances: [
            instance("orders", "10.0.0.1", 7001, zone: "a", weight: 3),
            instance("orders", "10.0.0.2", 7002, zone: "b"),
            instance("orders", "10.0.0.3", 7003, health: .unhealthy),
            instance("orders", "fd00::1", 7004, zone: "a"),
            instance("empty", "10.0.0.9", 7009, health: .starting),
            instance("stock", "stock-1.example.internal", 7010),
        ],
        revision: 42
    )

    @Test func serviceAnswersTheServingInstancesOnly() throws {
        let a = try ask(zone, "orders.service.mesh", .a)
        #expect(a.code == 0 && a.authoritative && !a.truncated && a.id == 0x1234)
        #expect(Set(a.answers.map(\.data)) == [[10, 0, 0, 1], [10, 0, 0, 2]])
        #expect(a.answers.allSatisfy { $0.ttl == 5 && $0.type == .a && $0.name == "orders.service.mesh" })
        let aaaa = try ask(zone, "orders.service.mesh", .aaaa)
        #expect(aaaa.answers.map(\.data) == [[0xFD, 0] + Array(repeating: 0, count: 13) + [1]])
    }

    @Test func srvCarriesWeightPortTargetAndAddresses() throws {
        let srv = try ask(zone, "_http._tcp.orders.service.mesh", .srv)
        #expect(srv.code == 0)
        let byPort = Dictionary(uniqueKeysWithValues: srv.answers.compactMap { $0.srv }.map { ($0.port, $0) })
        #expect(Set(byPort.keys) == [7001, 7002, 7004])
        #expect(byPort[7001]?.weight == 3 && byPort[7002]?.weight == 1)
        #expect(byPort[7001]?.target == "orders-10-0-0-1-7001.instance.mesh")
        #expect(byPort.values.allSatisfy { $0.priority == 0 })
        let glue = Dictionary(uniqueKeysWithValues: srv.additional.map { ($0.name, $0.data) })
        #expect(glue["orders-10-0-0-1-7001.instance.mesh"] == [10, 0, 0, 1])
        #expect(glue["orders-fd00--1-7004.instance.mesh"]?.count == 16)
        // The bare service name answers SRV too; an unknown port name does not exist.
        #expect(try ask(zone, "orders.service.mesh", .srv).answers.count == 3)
        #expect(try ask(zone, "_grpc._tcp.orders.service.mesh", .srv).code == 3)
        #expect(try ask(zone, "_http._udp.orders.service.mesh", .srv).code == 3)
    }

    @Test func zoneQualifierSetsPriorityAndPrefersTheZone() throws {
        let srv = try ask(zone, "_http._tcp.orders.service.b.mesh", .srv)
        let priorities = Dictionary(
            uniqueKeysWithValues: srv.answers.compactMap { $0.srv }.map { ($0.port, $0.priority) }
        )
        #expect(priorities == [7002: 0, 7001: 1, 7004: 1])
        #expect(try ask(zone, "orders.service.b.mesh", .a).answers.map(\.data) == [[10, 0, 0, 2]])
        // A zone with nothing serving falls back to every serving instance.
        #expect(try ask(zone, "orders.service.c.mesh", .a).answers.count == 2)
    }

    @Test func instanceNames() throws {
        let one = try ask(zone, "orders-10-0-0-2-7002.instance.mesh", .a)
        #expect(one.answers.map(\.data) == [[10, 0, 0, 2]])
        let srv = try ask(zone, "orders-10-0-0-2-7002.instance.mesh", .srv)
        #expect(srv.answers.first?.srv?.port == 7002 && srv.additional.count == 1)
        // Unhealthy: the name exists, it answers nothing.
        let sick = try ask(zone, "orders-10-0-0-3-7003.instance.mesh", .a)
        #expect(sick.code == 0 && sick.answers.isEmpty && sick.authority.first?.type == .soa)
        // An instance registered with a host name is a CNAME.
        let host = try ask(zone, "stock-stock-1-example-internal-7010.instance.mesh", .a)
        #expect(host.answers.first?.type == .cname)
    }

    @Test func negativeAnswers() throws {
        let unknown = try ask(zone, "nope.service.mesh", .a)
        #expect(unknown.code == 3 && unknown.authoritative && unknown.answers.isEmpty)
        let soa = try #require(unknown.authority.first)
        #expect(soa.type == .soa && soa.name == "mesh" && soa.ttl == 5)
        // Known, nothing serving: NOERROR, no answers.
        let empty = try ask(zone, "empty.service.mesh", .a)
        #expect(empty.code == 0 && empty.answers.isEmpty && empty.authority.count == 1)
        // A known name asked for a type it has none of.
        #expect(try ask(zone, "orders.service.mesh", .cname).answers.isEmpty)
        #expect(try ask(zone, "example.com", .a).code == 5)
        #expect(try ask(zone, "example.com", .a).authoritative == false)
        #expect(try ask(zone, "a.b.c.service.mesh", .a).code == 3)
        #expect(try ask(zone, "mesh", .soa).answers.first?.type == .soa)
    }

    @Test func questionIsEchoedWithTheClientsCase() throws {
        let answer = try ask(zone, "OrDeRs.SERVICE.mesh", .a)
        #expect(answer.questionName == "OrDeRs.SERVICE.mesh")
        #expect(answer.answers.count == 2)
    }

    @Test func largeAnswersTruncateOverUDPAndAreCompleteOverTCP() throws {
        let many = (1...120).map { instance("big", "10.1.\($0 / 250).\($0 % 250)", 8000 + $0) }
        let big = DNSZone(services: [], instances: many, revision: 1)
        var random = SplitMix64(seed: 1)
        let query = makeQuery("big.service.mesh", type: .a)
        let udp = try #require(DNSResponder.respond(to: query, transport: .udp, zone: big, random: &random))
        #expect(udp.bytes.count <= 512 && udp.truncated)
        let udpAnswer = try DecodedResponse(udp.bytes)
        #expect(udpAnswer.truncated && udpAnswer.answers.count > 20 && udpAnswer.answers.count < 120)
        let tcp = try #require(DNSResponder.respond(to: query, transport: .tcp, zone: big, random: &random))
        let tcpAnswer = try DecodedResponse(tcp.bytes)
        #expect(!tcpAnswer.truncated && tcpAnswer.answers.count == 120)
        // EDNS0: the client's buffer size is honoured, and our OPT comes back.
        let edns = try ask(big, "big.service.mesh", .a, edns: 4096)
        #expect(!edns.truncated && edns.answers.count == 120 && edns.additional.last?.type == .opt)
        let small = try #require(
            DNSResponder.respond(
                to: makeQuery("big.service.mesh", type: .a, edns: 1232),
                transport: .udp,
                zone: big,
                random: &random
            )
        )
        #expect(small.bytes.count <= 1232 && small.truncated)
        // SRV over UDP (EDNS 4096). 80 answers fit but not all their glue: every answer, no
        // TC, the glue that fits (RFC 2181 9: glue may go, answers may not).
        let eighty = DNSZone(services: [], instances: Array(many.prefix(80)), revision: 1)
        let srv = try ask(eighty, "big.service.mesh", .srv, edns: 4096)
        let glue = srv.additional.filter { $0.type == .a }.count
        #expect(srv.answers.count == 80 && !srv.truncated, "\(srv.answers.count) answers, TC \(srv.truncated)")
        #expect(glue > 0 && glue < 80, "\(glue) glue records")
        // 120 answers do not fit: TC, as many whole answers as fit, no glue.
        let all = try ask(big, "big.service.mesh", .srv, edns: 4096)
        #expect(all.truncated && all.answers.count > 80 && all.answers.count < 120, "\(all.answers.count)")
        #expect(all.additional.filter { $0.type == .a }.isEmpty)
    }

    @Test func answersAreShuffled() throws {
        let many = (1...8).map { instance("s", "10.2.0.\($0)", 9000 + $0) }
        let zone = DNSZone(services: [], instances: many, revision: 1)
        var random = SplitMix64(seed: 3)
        var orders = Set<[[UInt8]]>()
        for _ in 0..<20 {
            let outcome = try #require(
                DNSResponder.respond(
                    to: makeQuery("s.service.mesh", type: .a),
                    transport: .udp,
                    zone: zone,
                    random: &random
                )
            )
            orders.insert(try DecodedResponse(outcome.bytes).answers.map(\.data))
        }
        #expect(orders.count > 10)
    }

    @Test func configurableDomainAndTTL() throws {
        let custom = DNSZone(
            services: [],
            instances: [instance("orders", "10.0.0.1", 7001)],
            revision: 1,
            options: DNSZone.Options(domain: "mesh.internal", ttl: 30)
        )
        let answer = try ask(custom, "orders.service.mesh.internal", .a)
        #expect(answer.answers.first?.ttl == 30)
        #expect(try ask(custom, "orders.service.mesh", .a).code == 5)
    }
}

@Suite struct DNSWireTests {
    let zone = DNSZone(services: [], instances: [instance("orders", "10.0.0.1", 7001)], revision: 1)

    func respond(_ bytes: [UInt8], transport: DNSResponder.Transport = .udp) -> DNSResponder.Outcome? {
        var random = SplitMix64(seed: 9)
        return DNSResponder.respond(to: bytes, transport: transport, zone: zone, random: &random)
    }

    @Test func malformedQueriesGetFormerrWithTheirID() throws {
        var query = makeQuery("orders.service.mesh", type: .a, id: 0xBEEF)
        query.removeLast(3)  // cut inside the question
        let outcome = try #require(respond(query))
        #expect(outcome.code == .formatError)
        let answer = try DecodedResponse(outcome.bytes)
        #expect(answer.id == 0xBEEF && answer.code == 1)
        // Two questions.
        var two = makeQuery("orders.service.mesh", type: .a)
        two[5] = 2
        #expect(respond(two)?.code == .formatError)
        // Trailing garbage.
        #expect(respond(makeQuery("orders.service.mesh", type: .a) + [1, 2, 3])?.code == .formatError)
    }

    @Test func compressionLoopsAndBadLabelsAreRefused() throws {
        // Header, then a name that is a pointer to itself.
        let loop: [UInt8] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]
        #expect(respond(loop)?.code == .formatError)
        let forward: [UInt8] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 14, 0, 0, 1, 0, 1]
        #expect(respond(forward)?.code == .formatError)
        let extended: [UInt8] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 1]
        #expect(respond(extended)?.code == .formatError)
        // A name longer than 255 bytes.
        let long = Array(repeating: String(repeating: "a", count: 63), count: 5).joined(separator: ".")
        #expect(respond(makeQuery(long, type: .a))?.code == .formatError)
    }

    @Test func responsesAndRuntsAreDropped() {
        #expect(respond([1, 2, 3]) == nil)
        #expect(respond(makeQuery("orders.service.mesh", type: .a, flags: 0x8100)) == nil)
    }

    @Test func otherOpcodesClassesAndVersions() throws {
        let notify = makeQuery("orders.service.mesh", type: .a, flags: 0x2000)  // opcode 4
        #expect(respond(notify)?.code == .notImplemented)
        var chaos = makeQuery("orders.service.mesh", type: .a)
        chaos[chaos.count - 1] = 3
        #expect(respond(chaos)?.code == .refused)
        #expect(respond(makeQuery("mesh", type: .axfr), transport: .tcp)?.code == .refused)
        var version1 = makeQuery("orders.service.mesh", type: .a, edns: 1232)
        version1[version1.count - 5] = 1  // EDNS version 1
        let bad = try #require(respond(version1))
        #expect(bad.code == .badVersion)
        let decoded = try DecodedResponse(bad.bytes)
        #expect(decoded.additional.last?.type == .opt)
    }

    @Test func randomGarbageNeverCrashes() {
        var random = SplitMix64(seed: 11)
        let base = makeQuery("_http._tcp.orders.service.mesh", type: .srv, edns: 1232)
        var answered = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(random.next() % 80)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            } else {
                bytes = base
                for _ in 0..<(1 + Int(random.next() % 4)) {
                    bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next())
                }
            }
            var generator = random
            if let outcome = DNSResponder.respond(to: bytes, transport: .udp, zone: zone, random: &generator) {
                #expect(outcome.bytes.count <= 4096)
                answered += 1
            }
        }
        #expect(answered > 1000)
    }
}

/// A change rebuilds only the services it touched: the result is the zone a full rebuild
/// from the registry makes (instances added, made unhealthy, moved to another service, a
/// service deleted with its instances).
@Test func updatingTheTouchedServicesGivesTheZoneAFullRebuildGives() {
    func instance(_ id: String, _ service: String, _ port: Int, healthy: Bool = true) -> InstanceResource {
        var resource = InstanceResource(id: id, service: service, address: "10.0.0.\(port % 250)", port: port)
        if !healthy { resource.health = .unhealthy }
        return resource
    }
    func shape(_ zone: DNSZone) -> [String] {
        let instances = zone.instances.map { "\($0.key) \($0.value.service) \($0.value.port) \($0.value.serving)" }
        let services = zone.services.map { "\($0.key): " + $0.value.serving.map(\.label).joined(separator: ",") }
        return (instances + services).sorted() + ["serial \(zone.serial)"]
    }
    let services = [ServiceResource(name: "orders"), ServiceResource(name: "billing"), ServiceResource(name: "web")]
    var instances =
        (1...20).map { instance("orders-\($0)", "orders", 8000 + $0) }
        + (1...5).map { instance("billing-\($0)", "billing", 9000 + $0) } + [instance("web-1", "web", 7001)]
    let before = DNSZone(services: services, instances: instances, revision: 1)

    // orders-3 unhealthy, orders-21 new, billing-2 moves to web, billing deleted later.
    instances[2].health = .unhealthy
    instances.append(instance("orders-21", "orders", 8021))
    instances[instances.firstIndex { $0.id == "billing-2" }!].service = "web"
    let touched: Set<String> = ["orders", "billing", "web"]
    let updated = before.updating(
        touched,
        services: services.filter { touched.contains($0.name) },
        instances: instances.filter { touched.contains($0.service) },
        revision: 2
    )
    #expect(shape(updated) == shape(DNSZone(services: services, instances: instances, revision: 2)))

    let remaining = services.filter { $0.name != "billing" }
    let withoutBilling = instances.filter { $0.service != "billing" }
    let deleted = updated.updating(["billing"], services: [], instances: [], revision: 3)
    #expect(shape(deleted) == shape(DNSZone(services: remaining, instances: withoutBilling, revision: 3)))
    // Untouched services are not rebuilt: an update naming none changes only the serial.
    #expect(
        shape(deleted.updating([], services: [], instances: [], revision: 4)).dropLast() == shape(deleted).dropLast()
    )
}

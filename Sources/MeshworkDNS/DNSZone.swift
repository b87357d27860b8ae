import MeshworkModel

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The mesh's DNS names, answered from one snapshot of the registry (read lock-free by
/// value; a change rebuilds only the services it touched, `updating`):
///
/// - `orders.service.mesh.` A/AAAA: the serving instances' addresses;
/// - `_http._tcp.orders.service.mesh.` SRV (a named port of the service), and SRV on
///   `orders.service.mesh.` itself: priority, weight (the instance's), port, and a target
///   `<instance>.instance.mesh.` whose address goes in the additional section;
/// - `orders.service.<zone>.mesh.`: the same, preferring one zone: SRV priority 0 for its
///   instances and 1 for the others; A/AAAA only its instances while it has any;
/// - `<instance>.instance.mesh.`: one instance (while it is serving).
///
/// Unknown names get NXDOMAIN, known names with nothing serving NOERROR with no answers
/// (both with the SOA for negative caching), names outside the domain REFUSED.
public struct DNSZone: Sendable {
    public struct Options: Sendable, Hashable {
        /// The domain the server is authoritative for, without dots around it: `mesh`.
        public var domain: String = "mesh"
        /// TTL of every answer, and of negative answers (SOA minimum).
        public var ttl: UInt32 = 5

        public init(domain: String = "mesh", ttl: UInt32 = 5) {
            self.domain = domain
            self.ttl = ttl
        }
    }

    enum Address: Sendable, Hashable {
        case v4([UInt8])
        case v6([UInt8])
        /// A host name (instances may register one): a CNAME.
        case host([String])
    }

    struct Instance: Sendable {
        var label: String
        var service: String
        var address: Address
        var port: UInt16
        var weight: UInt16
        var zone: String?
        var serving: Bool
    }

    struct Service: Sendable {
        var ports: [ServicePort]
        var serving: [Instance]
    }

    public let options: Options
    let domainLabels: [String]
    var serial: UInt32
    var services: [String: Service] = [:]
    var instances: [String: Instance] = [:]
    /// Each service's instance labels (what `updating` removes before rebuilding it).
    var labels: [String: [String]] = [:]

    public init(
        services: [ServiceResource],
        instances: [InstanceResource],
        revision: Int64,
        options: Options = Options()
    ) {
        self.options = options
        self.domainLabels = options.domain.lowercased().split(separator: ".").map(String.init)
        self.serial = UInt32(truncatingIfNeeded: revision)
        insert(services: services, instances: instances)
    }

    /// This zone with the services named in `changed` rebuilt from `services` and
    /// `instances` (those of the changed services: the registry's now; a service absent
    /// from both is gone), every other service as it was: a registration costs in
    /// proportion to its service, not to the registry.
    public func updating(
        _ changed: Set<String>,
        services: [ServiceResource],
        instances: [InstanceResource],
        revision: Int64
    ) -> DNSZone {
        var zone = self
        zone.update(changed, services: services, instances: instances, revision: revision)
        return zone
    }

    /// `updating` in place: with the zone's storage not shared (no reader holds a copy),
    /// nothing else of it is copied.
    public mutating func update(
        _ changed: Set<String>,
        services: [ServiceResource],
        instances: [InstanceResource],
        revision: Int64
    ) {
        serial = UInt32(truncatingIfNeeded: revision)
        let names = Set(changed.map { $0.lowercased() })
        for name in names {
            for label in labels.removeValue(forKey: name) ?? [] where self.instances[label]?.service == name {
                self.instances[label] = nil
            }
            self.services[name] = nil
        }
        insert(
            services: services.filter { names.contains($0.name.lowercased()) },
            instances: instances.filter { names.contains($0.service.lowercased()) }
        )
    }

    private mutating func insert(services: [ServiceResource], instances: [InstanceResource]) {
        for service in services {
            self.services[service.name.lowercased()] = Service(ports: service.ports, serving: [])
        }
        for resource in instances.sorted(by: { $0.id < $1.id }) {
            guard let port = UInt16(exactly: resource.port) else { continue }
            let label = Self.label(for: resource.id)
            let instance = Instance(
                label: label,
                service: resource.service.lowercased(),
                address: Self.address(resource.address),
                port: port,
                weight: UInt16(clamping: resource.weight),
                zone: resource.zone,
                serving: resource.isServing
            )
            if self.instances[label] == nil {
                self.instances[label] = instance
                labels[instance.service, default: []].append(label)
            }
            // In place (a copy per instance made a service's rebuild quadratic).
            if self.services[instance.service] == nil {
                self.services[instance.service] = Service(ports: ServiceResource(name: "").ports, serving: [])
            }
            if instance.serving { self.services[instance.service]?.serving.append(instance) }
        }
    }

    /// An empty zone (before the registry is loaded).
    public init(options: Options = Options()) {
        self.init(services: [], instances: [], revision: 0, options: options)
    }

    /// The DNS label for an instance id: lowercased, anything but letters, digits and '-'
    /// turned into '-', at most 63 bytes.
    public static func label(for id: String) -> String {
        let mapped = id.lowercased().unicodeScalars.map { scalar -> Character in
            let isLabelCharacter =
                ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar) || scalar == "-"
            return isLabelCharacter ? Character(scalar) : "-"
        }
        return String(String(mapped).prefix(63))
    }

    static func address(_ text: String) -> Address {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return .v4(withUnsafeBytes(of: &v4) { Array($0) })
        }
        var v6 = in6_addr()
        let bare = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
        if inet_pton(AF_INET6, bare, &v6) == 1 {
            return .v6(withUnsafeBytes(of: &v6) { Array($0) })
        }
        return .host(text.lowercased().split(separator: ".").map(String.init))
    }

    // MARK: answering

    /// The answer to `query`; `random` shuffles the records (each answer in a new order).
    public func answer(_ query: DNSQuery, random: inout some RandomNumberGenerator) -> DNSResponse {
        let question = query.question
        guard question.class == DNSClass.internet || question.class == DNSClass.any else {
            return DNSResponse(code: .refused, authoritative: false)
        }
        let labels = question.labels
        guard labels.count >= domainLabels.count, Array(labels.suffix(domainLabels.count)) == domainLabels else {
            return DNSResponse(code: .refused, authoritative: false)
        }
        if question.type == .axfr || question.type == .ixfr {
            return DNSResponse(code: .refused, authoritative: false)
        }
        let name = Array(labels.dropLast(domainLabels.count))
        var response: DNSResponse
        switch name.count {
        case 0:
            response = apex(question.type)
        case 2 where name[1] == "instance":
            response = instance(name[0], type: question.type)
        case 2 where name[1] == "service", 3 where name[1] == "service":
            response = service(name[0], port: nil, zone: name.count == 3 ? name[2] : nil, type: question.type)
        case 4 where name[3] == "service", 5 where name[3] == "service":
            guard name[0].hasPrefix("_"), name[1].hasPrefix("_") else {
                response = DNSResponse(code: .nameError)
                break
            }
            let port = (String(name[0].dropFirst()), String(name[1].dropFirst()))
            response = service(name[2], port: port, zone: name.count == 5 ? name[4] : nil, type: question.type)
        default:
            response = DNSResponse(code: .nameError)
        }
        if response.answers.isEmpty {
            // NXDOMAIN or NODATA: the SOA tells resolvers how long to cache the absence.
            response.authority = [soa()]
        } else {
            response.answers.shuffle(using: &random)
        }
        return response
    }

    private func soa() -> DNSRecord {
        DNSRecord(
            name: domainLabels,
            ttl: options.ttl,
            data: .soa(
                primary: ["ns"] + domainLabels,
                mailbox: ["hostmaster"] + domainLabels,
                serial: serial,
                refresh: 3600,
                retry: 600,
                expire: 86_400,
                minimum: options.ttl
            )
        )
    }

    private func apex(_ type: DNSType) -> DNSResponse {
        var response = DNSResponse(code: .noError)
        if type == .soa || type == .any {
            var record = soa()
            record.name = nil
            response.answers = [record]
        }
        return response
    }

    private func instance(_ label: String, type: DNSType) -> DNSResponse {
        guard let instance = instances[label] else { return DNSResponse(code: .nameError) }
        var response = DNSResponse(code: .noError)
        guard instance.serving else { return response }
        if type == .srv || type == .any {
            response.answers.append(srv(instance, priority: 0, owner: nil))
        }
        switch instance.address {
        case .v4(let bytes) where type == .a || type == .any:
            response.answers.append(DNSRecord(name: nil, ttl: options.ttl, data: .a(bytes)))
        case .v6(let bytes) where type == .aaaa || type == .any:
            response.answers.append(DNSRecord(name: nil, ttl: options.ttl, data: .aaaa(bytes)))
        case .host(let target) where type == .a || type == .aaaa || type == .any || type == .cname:
            response.answers.append(DNSRecord(name: nil, ttl: options.ttl, data: .cname(target)))
        default:
            break
        }
        if type == .srv { response.additional = addresses(of: [instance]) }
        return response
    }

    private func service(
        _ name: String,
        port: (name: String, protocol: String)?,
        zone: String?,
        type: DNSType
    ) -> DNSResponse {
        guard let service = services[name] else { return DNSResponse(code: .nameError) }
        if let port, !service.ports.contains(where: { $0.name == port.name && $0.protocol.rawValue == port.protocol }) {
            return DNSResponse(code: .nameError)
        }
        var response = DNSResponse(code: .noError)
        let inZone = zone.map { zone in service.serving.filter { $0.zone?.lowercased() == zone } } ?? []
        if port == nil, type == .a || type == .aaaa || type == .any {
            var seen = Set<Address>()
            for instance in inZone.isEmpty ? service.serving : inZone where seen.insert(instance.address).inserted {
                switch instance.address {
                case .v4(let bytes) where type != .aaaa:
                    response.answers.append(DNSRecord(name: nil, ttl: options.ttl, data: .a(bytes)))
                case .v6(let bytes) where type != .a:
                    response.answers.append(DNSRecord(name: nil, ttl: options.ttl, data: .aaaa(bytes)))
                default:
                    break
                }
            }
        }
        if type == .srv || (type == .any && port != nil) {
            for instance in service.serving {
                let priority: UInt16 = zone == nil || instance.zone?.lowercased() == zone ? 0 : 1
                response.answers.append(srv(instance, priority: priority, owner: nil))
            }
            response.additional = addresses(of: service.serving)
        }
        return response
    }

    private func target(_ instance: Instance) -> [String] {
        [instance.label, "instance"] + domainLabels
    }

    private func srv(_ instance: Instance, priority: UInt16, owner: [String]?) -> DNSRecord {
        DNSRecord(
            name: owner,
            ttl: options.ttl,
            data: .srv(priority: priority, weight: instance.weight, port: instance.port, target: target(instance))
        )
    }

    private func addresses(of instances: [Instance]) -> [DNSRecord] {
        instances.compactMap { instance in
            switch instance.address {
            case .v4(let bytes): return DNSRecord(name: target(instance), ttl: options.ttl, data: .a(bytes))
            case .v6(let bytes): return DNSRecord(name: target(instance), ttl: options.ttl, data: .aaaa(bytes))
            case .host(let host): return DNSRecord(name: target(instance), ttl: options.ttl, data: .cname(host))
            }
        }
    }
}

/// Reads a query, answers it from a zone, writes the answer: what the UDP and TCP servers
/// share. Returns nil when nothing should be sent back.
public enum DNSResponder {
    public enum Transport: String, Sendable, CaseIterable {
        case udp
        case tcp
    }

    public struct Outcome: Sendable {
        public var bytes: [UInt8]
        public var code: DNSResponseCode
        public var truncated: Bool
    }

    /// The classic UDP limit when the client sent no EDNS0.
    public static let classicUDPSize = 512

    /// The largest answer `query` may get over `transport`.
    static func limit(for query: DNSQuery, transport: Transport) -> Int {
        switch transport {
        case .tcp:
            return Int(UInt16.max)
        case .udp:
            let requested = query.edns.map { max(classicUDPSize, $0.udpPayloadSize) } ?? classicUDPSize
            return min(requested, Int(DNSWriter.advertisedPayloadSize))
        }
    }

    public static func respond(
        to message: some Collection<UInt8>,
        transport: Transport,
        zone: DNSZone,
        random: inout some RandomNumberGenerator
    ) -> Outcome? {
        switch DNSReader.parse(message) {
        case .ignore:
            return nil
        case .malformed(let id, let opcode, let recursionDesired, _, let code):
            return Outcome(
                bytes: DNSWriter.error(code, id: id, opcode: opcode, recursionDesired: recursionDesired),
                code: code,
                truncated: false
            )
        case .query(let query):
            let (_, outcome) = answer(query, transport: transport, zone: zone, random: &random)
            return outcome
        }
    }

    /// A parsed query's answer, as records and as written (what `DNSAnswerCache` keeps).
    static func answer(
        _ query: DNSQuery,
        transport: Transport,
        zone: DNSZone,
        random: inout some RandomNumberGenerator
    ) -> (DNSResponse, Outcome) {
        let response: DNSResponse
        if let edns = query.edns, edns.version > 0 {
            response = DNSResponse(code: .badVersion, authoritative: false)
        } else {
            response = zone.answer(query, random: &random)
        }
        let written = DNSWriter.write(response, to: query, limit: limit(for: query, transport: transport))
        return (response, Outcome(bytes: written.bytes, code: response.code, truncated: written.truncated))
    }
}

/// The DNS wire format (RFC 1035, RFC 2782 SRV, RFC 3596 AAAA, RFC 6891 EDNS0): what the
/// controller's DNS server needs to read a query and write an authoritative answer.
/// No library in the project's set speaks DNS, so this is the small part written by hand:
/// a reader that refuses anything malformed with a reason, and a writer with name
/// compression and size-limited sections (truncation).

/// A record type (`A`, `SRV`, ...); any value is representable, the known ones are named.
public struct DNSType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let a = DNSType(rawValue: 1)
    public static let ns = DNSType(rawValue: 2)
    public static let cname = DNSType(rawValue: 5)
    public static let soa = DNSType(rawValue: 6)
    public static let aaaa = DNSType(rawValue: 28)
    public static let srv = DNSType(rawValue: 33)
    public static let opt = DNSType(rawValue: 41)
    public static let ixfr = DNSType(rawValue: 251)
    public static let axfr = DNSType(rawValue: 252)
    public static let any = DNSType(rawValue: 255)

    public var description: String {
        switch self {
        case .a: return "A"
        case .ns: return "NS"
        case .cname: return "CNAME"
        case .soa: return "SOA"
        case .aaaa: return "AAAA"
        case .srv: return "SRV"
        case .opt: return "OPT"
        case .any: return "ANY"
        default: return "TYPE\(rawValue)"
        }
    }
}

/// Response codes (RFC 1035 4.1.1; BADVERS from RFC 6891 needs the EDNS extended bits).
public enum DNSResponseCode: UInt16, Sendable, CaseIterable {
    case noError = 0
    case formatError = 1
    case serverFailure = 2
    case nameError = 3
    case notImplemented = 4
    case refused = 5
    case badVersion = 16

    /// The conventional mnemonic, used as a metric label.
    public var name: String {
        switch self {
        case .noError: return "NOERROR"
        case .formatError: return "FORMERR"
        case .serverFailure: return "SERVFAIL"
        case .nameError: return "NXDOMAIN"
        case .notImplemented: return "NOTIMP"
        case .refused: return "REFUSED"
        case .badVersion: return "BADVERS"
        }
    }
}

public enum DNSClass {
    public static let internet: UInt16 = 1
    public static let any: UInt16 = 255
}

/// EDNS0 as the client sent it (the OPT pseudo-record).
public struct EDNS: Sendable, Hashable {
    /// The largest UDP answer the client accepts.
    public var udpPayloadSize: Int
    public var version: UInt8
    public var dnssecOK: Bool
}

/// A question as read off the wire: the name both as the exact bytes the client sent
/// (echoed back, case preserved) and as lowercased labels for lookups.
public struct DNSQuestion: Sendable, Hashable {
    public var type: DNSType
    public var `class`: UInt16
    /// The question section exactly as received (name, type, class).
    public var wire: [UInt8]

    /// Lowercased labels, without the root: `["orders", "service", "mesh"]`. Decoded from
    /// `wire` when asked (an answer from `DNSAnswerCache` never needs them).
    public var labels: [String] {
        // The name's compression pointers count from the message's start (12 bytes
        // before the question), and only point backwards into the question itself.
        var cursor = DNSReader.Cursor(message: Array(repeating: 0, count: DNSReader.headerSize) + wire, offset: 12)
        return ((try? cursor.readName()) ?? []).map(DNSReader.lowercased)
    }
}

/// A query the server will answer.
public struct DNSQuery: Sendable, Hashable {
    public var id: UInt16
    public var opcode: UInt8
    public var recursionDesired: Bool
    public var checkingDisabled: Bool
    public var question: DNSQuestion
    public var edns: EDNS?
}

/// What reading a datagram (or a TCP message) gave.
public enum DNSParseResult: Sendable, Hashable {
    case query(DNSQuery)
    /// Not a readable query: answer FORMERR (or NOTIMP) when the header was readable.
    case malformed(id: UInt16, opcode: UInt8, recursionDesired: Bool, reason: String, code: DNSResponseCode)
    /// Too short for a header, or a response (QR set): drop without answering, so two
    /// servers can never bounce packets at each other.
    case ignore
}

/// Reads DNS messages.
public enum DNSReader {
    public static let headerSize = 12

    public static func parse(_ bytes: some Collection<UInt8>) -> DNSParseResult {
        let message = Array(bytes)
        guard message.count >= headerSize else { return .ignore }
        let id = UInt16(message[0]) << 8 | UInt16(message[1])
        let flags = UInt16(message[2]) << 8 | UInt16(message[3])
        guard flags & 0x8000 == 0 else { return .ignore }
        let opcode = UInt8((flags >> 11) & 0x0F)
        let recursionDesired = flags & 0x0100 != 0
        func malformed(_ reason: String, _ code: DNSResponseCode = .formatError) -> DNSParseResult {
            .malformed(id: id, opcode: opcode, recursionDesired: recursionDesired, reason: reason, code: code)
        }
        guard opcode == 0 else { return malformed("opcode \(opcode) is not supported", .notImplemented) }
        let counts = (0..<4).map { UInt16(message[4 + 2 * $0]) << 8 | UInt16(message[5 + 2 * $0]) }
        guard counts[0] == 1 else { return malformed("expected exactly one question, got \(counts[0])") }
        var cursor = Cursor(message: message, offset: headerSize)
        do {
            let questionStart = cursor.offset
            try cursor.skipName()
            let type = DNSType(rawValue: try cursor.readUInt16())
            let qclass = try cursor.readUInt16()
            let question = DNSQuestion(
                type: type,
                class: qclass,
                wire: Array(message[questionStart..<cursor.offset])
            )
            // Answer and authority records have no business in a query; skip them.
            for _ in 0..<(Int(counts[1]) + Int(counts[2])) { try cursor.skipRecord() }
            var edns: EDNS?
            for _ in 0..<Int(counts[3]) {
                let nameLabels = try cursor.skipName()
                let recordType = DNSType(rawValue: try cursor.readUInt16())
                let recordClass = try cursor.readUInt16()
                let ttl = try cursor.readUInt32()
                let length = Int(try cursor.readUInt16())
                try cursor.skip(length)
                guard recordType == .opt else { continue }
                guard edns == nil else { throw DNSWireError("more than one OPT record") }
                guard nameLabels == 0 else { throw DNSWireError("OPT record with a name other than the root") }
                edns = EDNS(
                    udpPayloadSize: Int(recordClass),
                    version: UInt8((ttl >> 16) & 0xFF),
                    dnssecOK: ttl & 0x8000 != 0
                )
            }
            guard cursor.offset == message.count else {
                throw DNSWireError("\(message.count - cursor.offset) bytes after the last record")
            }
            return .query(
                DNSQuery(
                    id: id,
                    opcode: opcode,
                    recursionDesired: recursionDesired,
                    checkingDisabled: flags & 0x0010 != 0,
                    question: question,
                    edns: edns
                )
            )
        } catch let error as DNSWireError {
            return malformed(error.reason)
        } catch {
            return malformed("\(error)")
        }
    }

    static func lowercased(_ label: [UInt8]) -> String {
        String(decoding: label.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
    }

    struct Cursor {
        let message: [UInt8]
        var offset: Int

        mutating func readUInt16() throws -> UInt16 {
            guard offset + 2 <= message.count else { throw DNSWireError("message ends inside a field") }
            defer { offset += 2 }
            return UInt16(message[offset]) << 8 | UInt16(message[offset + 1])
        }

        mutating func readUInt32() throws -> UInt32 {
            UInt32(try readUInt16()) << 16 | UInt32(try readUInt16())
        }

        mutating func skip(_ count: Int) throws {
            guard offset + count <= message.count else { throw DNSWireError("record data runs past the message") }
            offset += count
        }

        mutating func skipRecord() throws {
            try skipName()
            try skip(8)
            try skip(Int(try readUInt16()))
        }

        /// A name's labels, following compression pointers (each must point backwards, so
        /// a loop is impossible); at most 255 bytes in all (RFC 1035 2.3.4).
        mutating func readName() throws -> [[UInt8]] {
            var labels: [[UInt8]] = []
            let message = self.message
            try walkName { labels.append(Array(message[$0])) }
            return labels
        }

        /// Checks a name as `readName` does and moves past it, keeping nothing; returns
        /// its number of labels.
        @discardableResult
        mutating func skipName() throws -> Int {
            var count = 0
            try walkName { _ in count += 1 }
            return count
        }

        private mutating func walkName(_ label: (Range<Int>) -> Void) throws {
            var position = offset
            var end: Int?
            var length = 1
            while true {
                guard position < message.count else { throw DNSWireError("message ends inside a name") }
                let byte = message[position]
                switch byte & 0xC0 {
                case 0x00:
                    let count = Int(byte)
                    if count == 0 {
                        offset = end ?? position + 1
                        return
                    }
                    guard position + 1 + count <= message.count else {
                        throw DNSWireError("message ends inside a label")
                    }
                    length += count + 1
                    guard length <= 255 else { throw DNSWireError("name longer than 255 bytes") }
                    label((position + 1)..<(position + 1 + count))
                    position += 1 + count
                case 0xC0:
                    guard position + 1 < message.count else { throw DNSWireError("message ends inside a pointer") }
                    let target = Int(byte & 0x3F) << 8 | Int(message[position + 1])
                    guard target < position, target >= DNSReader.headerSize else {
                        throw DNSWireError("compression pointer does not point backwards into the message")
                    }
                    if end == nil { end = position + 2 }
                    position = target
                default:
                    throw DNSWireError("label type 0x\(String(byte & 0xC0, radix: 16)) is not supported")
                }
            }
        }
    }
}

struct DNSWireError: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}

/// A resource record to write.
public struct DNSRecord: Sendable, Hashable {
    public enum Data: Sendable, Hashable {
        case a([UInt8])
        case aaaa([UInt8])
        case cname([String])
        case ns([String])
        case srv(priority: UInt16, weight: UInt16, port: UInt16, target: [String])
        case soa(
            primary: [String],
            mailbox: [String],
            serial: UInt32,
            refresh: UInt32,
            retry: UInt32,
            expire: UInt32,
            minimum: UInt32
        )

        var type: DNSType {
            switch self {
            case .a: return .a
            case .aaaa: return .aaaa
            case .cname: return .cname
            case .ns: return .ns
            case .srv: return .srv
            case .soa: return .soa
            }
        }
    }

    /// The owner name's labels; nil: the question's name (written as a pointer to it).
    public var name: [String]?
    public var ttl: UInt32
    public var data: Data

    public init(name: [String]?, ttl: UInt32, data: Data) {
        self.name = name
        self.ttl = ttl
        self.data = data
    }
}

/// An answer to write.
public struct DNSResponse: Sendable, Hashable {
    public var code: DNSResponseCode
    public var authoritative: Bool
    public var answers: [DNSRecord] = []
    public var authority: [DNSRecord] = []
    public var additional: [DNSRecord] = []

    public init(code: DNSResponseCode, authoritative: Bool = true) {
        self.code = code
        self.authoritative = authoritative
    }
}

/// Writes a response, with name compression, within a size limit: answers that do not fit
/// are left out and the TC bit is set (the client retries over TCP); authority and
/// additional records that do not fit are left out without it (RFC 2181 9).
public struct DNSWriter {
    private var bytes: [UInt8] = []
    /// Names already written, for compression: a short list searched linearly (cheaper
    /// than hashing labels for the handful of names in one message).
    private var names: [(suffix: ArraySlice<String>, offset: Int)] = []
    public private(set) var truncated = false

    /// Bytes our OPT record takes (root name, type, class, TTL, empty data).
    static let optSize = 11
    /// The UDP payload size this server advertises.
    public static let advertisedPayloadSize: UInt16 = 4096

    public static func write(
        _ response: DNSResponse,
        to query: DNSQuery,
        limit: Int
    ) -> (bytes: [UInt8], truncated: Bool) {
        var writer = DNSWriter()
        return writer.encode(
            response,
            id: query.id,
            opcode: query.opcode,
            recursionDesired: query.recursionDesired,
            checkingDisabled: query.checkingDisabled,
            question: query.question,
            edns: query.edns,
            limit: limit
        )
    }

    /// A header-only error answer (FORMERR, NOTIMP) for a query that could not be read.
    public static func error(
        _ code: DNSResponseCode,
        id: UInt16,
        opcode: UInt8,
        recursionDesired: Bool
    ) -> [UInt8] {
        var writer = DNSWriter()
        writer.header(
            id: id,
            opcode: opcode,
            authoritative: false,
            truncated: false,
            recursionDesired: recursionDesired,
            checkingDisabled: false,
            code: code.rawValue & 0x0F,
            counts: (0, 0, 0, 0)
        )
        return writer.bytes
    }

    mutating func encode(
        _ response: DNSResponse,
        id: UInt16,
        opcode: UInt8,
        recursionDesired: Bool,
        checkingDisabled: Bool,
        question: DNSQuestion,
        edns: EDNS?,
        limit: Int
    ) -> (bytes: [UInt8], truncated: Bool) {
        header(
            id: id,
            opcode: opcode,
            authoritative: response.authoritative,
            truncated: false,
            recursionDesired: recursionDesired,
            checkingDisabled: checkingDisabled,
            code: response.code.rawValue & 0x0F,
            counts: (1, 0, 0, 0)
        )
        bytes += question.wire
        // The question's name sits at offset 12: every suffix of it can be pointed at, at
        // the offset its labels have on the wire (a label that is not UTF-8 is longer as a
        // String; from a compression pointer on, the suffixes are elsewhere: none is kept).
        if question.wire.count <= 255 {
            let wire = question.wire
            var position = 0
            let labels = question.labels
            for index in labels.indices {
                guard position < wire.count, wire[position] & 0xC0 == 0, wire[position] > 0 else { break }
                names.append((labels[index...], DNSReader.headerSize + position))
                position += 1 + Int(wire[position])
            }
        }
        let budget = max(DNSReader.headerSize, limit - (edns == nil ? 0 : Self.optSize))
        var answerCount = 0
        for record in response.answers {
            guard append(record, question: question, budget: budget) else {
                truncated = true
                break
            }
            answerCount += 1
        }
        var authorityCount = 0
        if !truncated {
            for record in response.authority {
                guard append(record, question: question, budget: budget) else { break }
                authorityCount += 1
            }
        }
        var additionalCount = 0
        if !truncated {
            for record in response.additional {
                guard append(record, question: question, budget: budget) else { break }
                additionalCount += 1
            }
        }
        if edns != nil {
            // OPT: root name, type 41, our payload size as class, extended rcode in TTL.
            bytes += [0, 0, 41]
            put16(Self.advertisedPayloadSize)
            bytes += [UInt8(response.code.rawValue >> 4), 0, 0, 0, 0, 0]
            additionalCount += 1
        }
        setCount(at: 6, answerCount)
        setCount(at: 8, authorityCount)
        setCount(at: 10, additionalCount)
        if truncated { bytes[2] |= 0x02 }
        return (bytes, truncated)
    }

    private mutating func header(
        id: UInt16,
        opcode: UInt8,
        authoritative: Bool,
        truncated: Bool,
        recursionDesired: Bool,
        checkingDisabled: Bool,
        code: UInt16,
        counts: (Int, Int, Int, Int)
    ) {
        put16(id)
        var flags: UInt16 = 0x8000 | UInt16(opcode & 0x0F) << 11
        if authoritative { flags |= 0x0400 }
        if truncated { flags |= 0x0200 }
        if recursionDesired { flags |= 0x0100 }
        if checkingDisabled { flags |= 0x0010 }
        flags |= code & 0x0F
        put16(flags)
        put16(UInt16(counts.0))
        put16(UInt16(counts.1))
        put16(UInt16(counts.2))
        put16(UInt16(counts.3))
    }

    private mutating func setCount(at offset: Int, _ count: Int) {
        bytes[offset] = UInt8(count >> 8)
        bytes[offset + 1] = UInt8(count & 0xFF)
    }

    /// Appends one record; false (and nothing written) when it would pass `budget`.
    private mutating func append(_ record: DNSRecord, question: DNSQuestion, budget: Int) -> Bool {
        let mark = bytes.count
        let savedNames = names.count
        if let name = record.name {
            putName(name)
        } else {
            bytes += [0xC0, UInt8(DNSReader.headerSize)]
        }
        put16(record.data.type.rawValue)
        put16(DNSClass.internet)
        put32(record.ttl)
        let lengthOffset = bytes.count
        put16(0)
        switch record.data {
        case .a(let address), .aaaa(let address):
            bytes += address
        case .cname(let target), .ns(let target):
            putName(target)
        case .srv(let priority, let weight, let port, let target):
            put16(priority)
            put16(weight)
            put16(port)
            putName(target)
        case .soa(let primary, let mailbox, let serial, let refresh, let retry, let expire, let minimum):
            putName(primary)
            putName(mailbox)
            for value in [serial, refresh, retry, expire, minimum] { put32(value) }
        }
        let length = bytes.count - lengthOffset - 2
        bytes[lengthOffset] = UInt8(length >> 8)
        bytes[lengthOffset + 1] = UInt8(length & 0xFF)
        guard bytes.count <= budget else {
            bytes.removeSubrange(mark...)
            names.removeSubrange(savedNames...)
            return false
        }
        return true
    }

    /// Writes a name, pointing at the longest suffix already written.
    private mutating func putName(_ labels: [String]) {
        var index = 0
        while index < labels.count {
            let suffix = labels[index...]
            if let known = names.first(where: { $0.suffix == suffix }) {
                put16(0xC000 | UInt16(known.offset))
                return
            }
            if bytes.count < 0x3FFF { names.append((suffix, bytes.count)) }
            let label = Array(labels[index].utf8.prefix(63))
            bytes.append(UInt8(label.count))
            bytes += label
            index += 1
        }
        bytes.append(0)
    }

    private mutating func put16(_ value: UInt16) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xFF))
    }

    private mutating func put32(_ value: UInt32) {
        put16(UInt16(value >> 16))
        put16(UInt16(value & 0xFFFF))
    }
}

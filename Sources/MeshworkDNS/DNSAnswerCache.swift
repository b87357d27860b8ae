/// Answers encoded once per zone and question, reused until the zone changes: one cache per
/// socket handler (an event loop's own, no lock). Building the records of an answer and
/// encoding them with name compression was most of a query's cost (perf: zone lookup 16%,
/// writer 15% of the server's CPU, against 8% for parsing); a cached answer is a copy with
/// the query's ID, flags and question case written over it.
///
/// What is cached: whole NOERROR answers only (NXDOMAIN, REFUSED, errors and truncated
/// answers take the full path, so names that do not exist cannot fill it), keyed by the lowercased question, whether
/// the query had EDNS, and the size limit (which decides truncation). At most `capacity`
/// entries: a full cache is emptied and fills again. Answers keep their per-query order:
/// A and AAAA records (each a fixed-size block pointing at the question's name) are
/// shuffled per query like the full path does; other answers with several records (SRV,
/// whose targets compress against each other) are kept in up to `variants` rotations of a
/// shuffled order, one picked per query, so each of up to that many records comes first
/// as often as the others (SRV clients pick by weight themselves, RFC 2782).
public struct DNSAnswerCache {
    struct Key: Hashable {
        /// The question section, its name lowercased.
        var question: [UInt8]
        var edns: Bool
        var limit: Int
    }

    struct Entry {
        /// Whole answers with ID 0 and RD/CD clear (several rotations, or one).
        var variants: [[UInt8]]
        /// Fixed-size answer records to shuffle per query: where they start, their size
        /// and how many (a count below 2: nothing to shuffle).
        var blockStart: Int
        var blockSize: Int
        var blockCount: Int
        var code: DNSResponseCode
        var truncated: Bool
    }

    public let capacity: Int
    public static let variants = 8
    private var generation: UInt64?
    private var entries: [Key: Entry] = [:]

    public init(capacity: Int = 4096) {
        self.capacity = capacity
    }

    public var count: Int { entries.count }

    /// `DNSResponder.respond`, from the cache when it holds the answer for this zone
    /// generation; `zone` is asked for only on a miss.
    public mutating func respond(
        to message: some Collection<UInt8>,
        transport: DNSResponder.Transport,
        generation: UInt64,
        zone: () -> DNSZone,
        random: inout some RandomNumberGenerator
    ) -> DNSResponder.Outcome? {
        if self.generation != generation {
            entries.removeAll(keepingCapacity: true)
            self.generation = generation
        }
        guard case .query(let query) = DNSReader.parse(message), query.edns.map({ $0.version == 0 }) ?? true else {
            return DNSResponder.respond(to: message, transport: transport, zone: zone(), random: &random)
        }
        let limit = DNSResponder.limit(for: query, transport: transport)
        let key = Key(question: Self.lowercased(query.question.wire), edns: query.edns != nil, limit: limit)
        if let entry = entries[key] {
            return Self.answer(entry, to: query, random: &random)
        }
        let zone = zone()
        let response = zone.answer(query, random: &random)
        let written = DNSWriter.write(response, to: query, limit: limit)
        // (A truncated answer is not kept: the full path picks a new subset each time.)
        if response.code == .noError, !written.truncated {
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[key] = Self.entry(response, written: written, query: query, limit: limit)
        }
        return DNSResponder.Outcome(bytes: written.bytes, code: response.code, truncated: written.truncated)
    }

    private static func entry(
        _ response: DNSResponse,
        written: (bytes: [UInt8], truncated: Bool),
        query: DNSQuery,
        limit: Int
    ) -> Entry {
        var template = query
        template.id = 0
        template.recursionDesired = false
        template.checkingDisabled = false
        let blockSize: Int
        if !response.answers.isEmpty, response.answers.allSatisfy({ $0.name == nil && $0.data.isA }) {
            blockSize = 2 + 10 + 4
        } else if !response.answers.isEmpty, response.answers.allSatisfy({ $0.name == nil && $0.data.isAAAA }) {
            blockSize = 2 + 10 + 16
        } else {
            blockSize = 0
        }
        let written = DNSWriter.write(response, to: template, limit: limit)
        let answered = Int(written.bytes[6]) << 8 | Int(written.bytes[7])
        var variants = [written.bytes]
        if blockSize == 0, response.answers.count > 1 {
            // Rotations of the shuffled order: each record first in one of them.
            let count = min(response.answers.count, Self.variants)
            for index in 1..<count {
                var rotated = response
                let shift = index * response.answers.count / count
                rotated.answers = Array(response.answers[shift...] + response.answers[..<shift])
                variants.append(DNSWriter.write(rotated, to: template, limit: limit).bytes)
            }
        }
        return Entry(
            variants: variants,
            blockStart: DNSReader.headerSize + query.question.wire.count,
            blockSize: blockSize,
            blockCount: blockSize == 0 ? 0 : answered,
            code: response.code,
            truncated: written.truncated
        )
    }

    private static func answer(
        _ entry: Entry,
        to query: DNSQuery,
        random: inout some RandomNumberGenerator
    ) -> DNSResponder.Outcome {
        var bytes =
            entry.variants.count == 1
            ? entry.variants[0] : entry.variants[Int(random.next() % UInt64(entry.variants.count))]
        bytes[0] = UInt8(query.id >> 8)
        bytes[1] = UInt8(query.id & 0xFF)
        if query.recursionDesired { bytes[2] |= 0x01 }
        if query.checkingDisabled { bytes[3] |= 0x10 }
        // The question as the client wrote it (the same length: only the case differs).
        let wire = query.question.wire
        bytes.replaceSubrange(DNSReader.headerSize..<DNSReader.headerSize + wire.count, with: wire)
        if entry.blockCount > 1 {
            bytes.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress! + entry.blockStart
                var scratch = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
                withUnsafeMutableBytes(of: &scratch) { temp in
                    // Fisher-Yates over the fixed-size records.
                    var index = entry.blockCount - 1
                    while index > 0 {
                        let other = Int(random.next() % UInt64(index + 1))
                        if other != index {
                            let a = base + index * entry.blockSize
                            let b = base + other * entry.blockSize
                            temp.baseAddress!.copyMemory(from: a, byteCount: entry.blockSize)
                            a.copyMemory(from: b, byteCount: entry.blockSize)
                            b.copyMemory(from: temp.baseAddress!, byteCount: entry.blockSize)
                        }
                        index -= 1
                    }
                }
            }
        }
        return DNSResponder.Outcome(bytes: bytes, code: entry.code, truncated: entry.truncated)
    }

    /// The question section with its name's ASCII letters lowercased (not the type and
    /// class after it, whose bytes may fall in that range).
    static func lowercased(_ wire: [UInt8]) -> [UInt8] {
        var out = wire
        for index in 0..<max(0, wire.count - 4) where out[index] >= 0x41 && out[index] <= 0x5A {
            out[index] |= 0x20
        }
        return out
    }
}

extension DNSRecord.Data {
    var isA: Bool {
        if case .a = self { return true }
        return false
    }

    var isAAAA: Bool {
        if case .aaaa = self { return true }
        return false
    }
}

/// Answers encoded once per zone and question, reused until the zone changes: one cache per
/// socket handler (an event loop's own, no lock). Building the records of an answer and
/// encoding them with name compression was most of a query's cost (perf: zone lookup 16%,
/// writer 15% of the server's CPU, against 8% for parsing); a cached answer is a copy with
/// the query's ID, flags and question case written over it.
///
/// What is cached: whole NOERROR answers only (NXDOMAIN, REFUSED, errors and truncated
/// answers take the full path), keyed by the lowercased question, whether the query had
/// EDNS, and the size limit (which decides truncation). At most `capacity` entries and
/// `maxBytes` of answers: a full cache is emptied and fills again, so a client asking for
/// ever new names (a zone label is any label) costs a miss each, never memory. A miss
/// costs one encoding, as on the full path; an entry's rotations are built when it is
/// first reused. TCP connections use none (each would be a cache of its own). Answers keep their per-query order:
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
        /// The records, kept until the entry is first reused: its rotations are built then
        /// (an answer asked for once costs one encoding, as on the full path).
        var pending: DNSResponse?
        /// Fixed-size answer records to shuffle per query: where they start, their size
        /// and how many (a count below 2: nothing to shuffle).
        var blockStart: Int
        var blockSize: Int
        var blockCount: Int
        var code: DNSResponseCode
    }

    public let capacity: Int
    /// Bytes of answers kept at most (beyond, the cache is emptied and fills again).
    public let maxBytes: Int
    public static let variants = 8
    private var generation: UInt64?
    private var entries: [Key: Entry] = [:]
    private var bytes = 0

    public init(capacity: Int = 4096, maxBytes: Int = 4 << 20) {
        self.capacity = capacity
        self.maxBytes = maxBytes
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
            empty()
            self.generation = generation
        }
        guard case .query(let query) = DNSReader.parse(message) else {
            return DNSResponder.respond(to: message, transport: transport, zone: zone(), random: &random)
        }
        guard query.edns.map({ $0.version == 0 }) ?? true, let folded = Self.caseFolded(query.question.wire) else {
            return DNSResponder.answer(query, transport: transport, zone: zone(), random: &random).1
        }
        let limit = DNSResponder.limit(for: query, transport: transport)
        let key = Key(question: folded, edns: query.edns != nil, limit: limit)
        if var entry = entries[key] {
            if let response = entry.pending {
                // Reused: now it is worth its rotations (within the byte bound).
                entries[key] = nil
                entry.pending = nil
                let rotations = Self.rotations(of: response, query: query, limit: limit)
                let size = rotations.reduce(0) { $0 + $1.count }
                if bytes + size <= maxBytes {
                    entry.variants += rotations
                    bytes += size
                }
                entries[key] = entry
            }
            return Self.answer(entry, to: query, random: &random)
        }
        let (response, outcome) = DNSResponder.answer(query, transport: transport, zone: zone(), random: &random)
        // (A truncated answer is not kept: the full path picks a new subset each time.)
        if response.code == .noError, !outcome.truncated {
            if entries.count >= capacity || bytes + outcome.bytes.count > maxBytes { empty() }
            entries[key] = Self.entry(response, written: outcome.bytes, query: query)
            bytes += outcome.bytes.count
        }
        return outcome
    }

    private mutating func empty() {
        entries.removeAll(keepingCapacity: true)
        bytes = 0
    }

    private static func entry(_ response: DNSResponse, written: [UInt8], query: DNSQuery) -> Entry {
        let blockSize: Int
        if !response.answers.isEmpty, response.answers.allSatisfy({ $0.name == nil && $0.data.isA }) {
            blockSize = 2 + 10 + 4
        } else if !response.answers.isEmpty, response.answers.allSatisfy({ $0.name == nil && $0.data.isAAAA }) {
            blockSize = 2 + 10 + 16
        } else {
            blockSize = 0
        }
        return Entry(
            variants: [template(written)],
            pending: blockSize == 0 && response.answers.count > 1 ? response : nil,
            blockStart: DNSReader.headerSize + query.question.wire.count,
            blockSize: blockSize,
            blockCount: blockSize == 0 ? 0 : Int(written[6]) << 8 | Int(written[7]),
            code: response.code
        )
    }

    /// An answer as kept: ID 0, RD and CD clear (each query's are written over it).
    private static func template(_ written: [UInt8]) -> [UInt8] {
        var bytes = written
        bytes[0] = 0
        bytes[1] = 0
        bytes[2] &= ~0x01
        bytes[3] &= ~0x10
        return bytes
    }

    /// Rotations of the (shuffled) order of a multi-record answer: each record first in
    /// one of them. One that would come out truncated (a name past the compression
    /// window makes sizes depend on the order) is left out.
    private static func rotations(of response: DNSResponse, query: DNSQuery, limit: Int) -> [[UInt8]] {
        let count = min(response.answers.count, Self.variants)
        var variants: [[UInt8]] = []
        for index in 1..<count {
            var rotated = response
            let shift = index * response.answers.count / count
            rotated.answers = Array(response.answers[shift...] + response.answers[..<shift])
            let written = DNSWriter.write(rotated, to: query, limit: limit)
            if !written.truncated { variants.append(template(written.bytes)) }
        }
        return variants
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
        return DNSResponder.Outcome(bytes: bytes, code: entry.code, truncated: false)
    }

    /// The question section with the ASCII letters of its name's labels lowercased (not
    /// the length bytes, nor the type and class after the name); nil when the name holds
    /// a compression pointer (legal but never sent by resolvers: two questions whose
    /// pointers differ only in a byte that folds would share an entry), so it is not kept.
    static func caseFolded(_ wire: [UInt8]) -> [UInt8]? {
        var out = wire
        var index = 0
        while index < out.count {
            let length = Int(out[index])
            if length == 0 { return out }
            guard length & 0xC0 == 0, index + 1 + length <= out.count else { return nil }
            for position in (index + 1)...(index + length) where out[position] >= 0x41 && out[position] <= 0x5A {
                out[position] |= 0x20
            }
            index += 1 + length
        }
        return nil
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

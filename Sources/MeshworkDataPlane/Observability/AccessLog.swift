import Dispatch
import MeshworkModel
import NIOCore
import Synchronization
import W3CTraceContext

#if canImport(Glibc)
import Glibc
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let systemWrite = Darwin.write
#endif

/// The file access log lines go to, opened once and shared by every loop's writer. Writes
/// happen on a queue of their own, never on an event loop: a slow disk or a stdout pipe
/// nobody reads cannot stall the proxy. What waits is bounded; past it, buffers are dropped
/// and counted.
public final class AccessLogFile: Sendable {
    let descriptor: Int32
    private let owned: Bool
    private let queue = DispatchQueue(label: "meshwork.access-log")
    private let pending = Atomic<Int>(0)
    /// Bytes of lines dropped because the writes fell more than `maxPending` behind.
    public let droppedBytes = Atomic<Int>(0)
    static let maxPending = 8 << 20

    /// Opens (appends to) the target; throws the reason when the file cannot be opened.
    public init(_ target: AccessLogTarget) throws(ConfigErrors) {
        switch target {
        case .stdout:
            descriptor = 1
            owned = false
        case .file(let path):
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw ConfigErrors([
                    ConfigError(path: "accessLog", reason: "cannot open \(path): \(String(cString: strerror(errno)))")
                ])
            }
            descriptor = fd
            owned = true
        }
    }

    deinit {
        if owned { close(descriptor) }
    }

    /// Hands a buffer of whole lines to the writing queue (one buffer, one write: with
    /// O_APPEND, lines from different loops never interleave).
    func enqueue(_ bytes: [UInt8]) {
        let size = bytes.count
        guard pending.add(size, ordering: .relaxed).newValue <= Self.maxPending else {
            pending.subtract(size, ordering: .relaxed)
            droppedBytes.add(size, ordering: .relaxed)
            return
        }
        queue.async {
            self.write(bytes)
            self.pending.subtract(size, ordering: .relaxed)
        }
    }

    /// Waits for every queued write (at shutdown).
    func sync() {
        queue.sync {}
    }

    private func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                systemWrite(descriptor, raw.baseAddress! + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// One event loop's access log: lines collect in a buffer written out when it passes 32 KiB
/// and every 200 ms, so a request costs a few appends, not a system call.
final class AccessLogWriter {
    private let file: AccessLogFile
    private var buffer: [UInt8] = []
    private let loop: any EventLoop
    private var flushTask: Scheduled<Void>?

    init(file: AccessLogFile, loop: any EventLoop) {
        self.file = file
        self.loop = loop
    }

    /// The flush timer starts with the first line, on the loop.
    private func startFlushing() {
        buffer.reserveCapacity(40 * 1024)
        flushTask = loop.assumeIsolated().scheduleTask(in: .milliseconds(200)) { [weak self] in
            guard let self, self.flushTask != nil else { return }
            self.flush()
            self.startFlushing()
        }
    }

    func flush() {
        guard !buffer.isEmpty else { return }
        file.enqueue(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    func stop() {
        flushTask?.cancel()
        flushTask = nil
        flush()
        file.sync()
    }

    /// One exchange as a JSON line.
    func log(_ record: ExchangeRecord, unixNanos: UInt64) {
        if flushTask == nil { startFlushing() }
        // One exclusive access to the buffer for the whole line (a class property is
        // checked at run time on every access: dozens of appends would each pay for it).
        Self.line(record, unixNanos: unixNanos, into: &buffer)
        if buffer.count > 32 * 1024 { flush() }
    }

    static func line(_ record: ExchangeRecord, unixNanos: UInt64, into out: inout [UInt8]) {
        out.append(contentsOf: #"{"time":""#.utf8)
        appendTimestamp(unixNanos, to: &out)
        out.append(contentsOf: #"","direction":""#.utf8)
        out.append(contentsOf: record.direction.rawValue.utf8)
        out.append(UInt8(ascii: "\""))
        field("source", record.source, into: &out)
        field("target", record.target, into: &out)
        field("method", record.method, into: &out)
        field("path", record.path, into: &out)
        out.append(contentsOf: #","status":"#.utf8)
        appendDecimal(Int64(record.status), to: &out)
        out.append(contentsOf: #","duration_ms":"#.utf8)
        let micros = max(0, record.nanoseconds / 1000)
        appendDecimal(micros / 1000, to: &out)
        out.append(UInt8(ascii: "."))
        appendDecimal(micros % 1000, to: &out, width: 3)
        if let meshError = record.meshError { field("mesh_error", meshError, into: &out) }
        if let route = record.route { field("route", route, into: &out) }
        if let traceID = record.traceID {
            withUnsafeBytes(of: traceID.bytes) { hexField("trace_id", $0, into: &out) }
        }
        if let spanID = record.spanID { withUnsafeBytes(of: spanID.bytes) { hexField("span_id", $0, into: &out) } }
        out.append(contentsOf: "}\n".utf8)
    }

    private static func field(_ name: String, _ value: String, into out: inout [UInt8]) {
        out.append(contentsOf: #",""#.utf8)
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: #"":""#.utf8)
        appendEscaped(value, to: &out)
        out.append(UInt8(ascii: "\""))
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private static func hexField(_ name: String, _ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        out.append(contentsOf: #",""#.utf8)
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: #"":""#.utf8)
        for byte in bytes {
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0x0F)])
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Decimal digits straight into the buffer (no String per number), zero-padded to `width`.
    static func appendDecimal(_ value: Int64, to out: inout [UInt8], width: Int = 1) {
        var digits:
            (
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
            ) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value < 0 ? 0 : UInt64(value)
        withUnsafeMutableBytes(of: &digits) { space in
            repeat {
                space[count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0 && count < space.count
            while count < width && count < space.count {
                space[count] = UInt8(ascii: "0")
                count += 1
            }
            for index in stride(from: count - 1, through: 0, by: -1) { out.append(space[index]) }
        }
    }

    /// JSON string escaping (RFC 8259 section 7): quote, backslash and control characters.
    static func appendEscaped(_ value: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case 0..<0x20:
                out.append(contentsOf: #"\u00"#.utf8)
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
    }

    /// RFC 3339 UTC with milliseconds, from the civil-from-days algorithm (Howard Hinnant,
    /// "chrono-Compatible Low-Level Date Algorithms"): integer arithmetic, no formatter.
    static func appendTimestamp(_ unixNanos: UInt64, to out: inout [UInt8]) {
        let seconds = Int64(unixNanos / 1_000_000_000)
        let millis = Int64(unixNanos / 1_000_000 % 1000)
        let days = seconds / 86_400
        let secondOfDay = seconds % 86_400
        let z = days + 719_468
        let era = z / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) {
            out.append(UInt8(48 + value / 10))
            out.append(UInt8(48 + value % 10))
        }
        appendDecimal(year, to: &out, width: 4)
        out.append(UInt8(ascii: "-"))
        two(month)
        out.append(UInt8(ascii: "-"))
        two(day)
        out.append(UInt8(ascii: "T"))
        two(secondOfDay / 3600)
        out.append(UInt8(ascii: ":"))
        two(secondOfDay / 60 % 60)
        out.append(UInt8(ascii: ":"))
        two(secondOfDay % 60)
        out.append(UInt8(ascii: "."))
        appendDecimal(millis, to: &out, width: 3)
        out.append(UInt8(ascii: "Z"))
    }
}

/// The path of a request target, normalized once, before authorization, routes or the
/// gateway look at it, and sent on to the app as it was matched: what was authorized is
/// what the app serves. Without it `/api/../admin`, `//admin` or `/%61dmin` pass a
/// `deny /admin` rule and reach `/admin` in any app that normalizes itself.
///
/// The rules (RFC 3986 section 6.2.2, as Envoy's `normalize_path` plus `merge_slashes`):
/// percent-encodings of unreserved characters are decoded (`%61` -> `a`, `%2E` -> `.`), the
/// hex digits of every other one are upper-cased; repeated slashes are merged and then dot
/// segments removed (section 5.2.4), so `/a//../b` is `/b`, as an app that merges slashes
/// reads it. The query is kept as it came. Ambiguous targets
/// are refused rather than guessed at, since the app behind may read them either way: an
/// encoded `/` or `\`, a raw `\`, NUL or another control character, a `%` not followed by
/// two hex digits, a fragment, or a path that does not start with `/`.
public enum RequestPath {
    public enum Failure: Error, Hashable, Sendable {
        case notAbsolute
        case encodedSeparator
        case controlCharacter
        case backslash
        case badPercentEncoding
        case fragment
    }

    /// The normalized origin-form target (path and query); the same string, without a new
    /// allocation, when it is normal already (almost every request).
    public static func normalize(_ target: String) -> Result<String, Failure> {
        let utf8 = target.utf8
        guard utf8.first == UInt8(ascii: "/") else { return .failure(.notAbsolute) }
        var needsWork = false
        var inQuery = false
        var previous: UInt8 = 0
        for byte in utf8 {
            if byte < 0x20 || byte == 0x7F { return .failure(.controlCharacter) }
            if byte == UInt8(ascii: "#") { return .failure(.fragment) }
            if inQuery { continue }
            switch byte {
            case UInt8(ascii: "?"): inQuery = true
            case UInt8(ascii: "\\"): return .failure(.backslash)
            case UInt8(ascii: "%"): needsWork = true
            case UInt8(ascii: "/") where previous == UInt8(ascii: "/"): needsWork = true
            case UInt8(ascii: ".") where previous == UInt8(ascii: "/"): needsWork = true
            default: break
            }
            previous = byte
        }
        guard needsWork else { return .success(target) }
        return normalizeSlowly(Array(utf8))
    }

    private static func normalizeSlowly(_ bytes: [UInt8]) -> Result<String, Failure> {
        let queryStart = bytes.firstIndex(of: UInt8(ascii: "?")) ?? bytes.endIndex
        // 1. Percent-encodings: decode the unreserved, refuse the ambiguous.
        var path: [UInt8] = []
        path.reserveCapacity(queryStart)
        var index = 0
        while index < queryStart {
            let byte = bytes[index]
            guard byte == UInt8(ascii: "%") else {
                path.append(byte)
                index += 1
                continue
            }
            guard index + 2 < queryStart, let high = hexValue(bytes[index + 1]), let low = hexValue(bytes[index + 2])
            else { return .failure(.badPercentEncoding) }
            let value = high << 4 | low
            switch value {
            case 0..<0x20, 0x7F: return .failure(.controlCharacter)
            case UInt8(ascii: "/"), UInt8(ascii: "\\"): return .failure(.encodedSeparator)
            default: break
            }
            if isUnreserved(value) {
                path.append(value)
            } else {
                path.append(UInt8(ascii: "%"))
                path.append(upperHex(high))
                path.append(upperHex(low))
            }
            index += 3
        }
        // 2. Segments: repeated slashes merged, `.` and `..` removed (RFC 3986 5.2.4).
        var segments: [ArraySlice<UInt8>] = []
        var trailingSlash = false
        for segment in path.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            trailingSlash = false
            if segment.isEmpty {
                trailingSlash = true
            } else if segment.elementsEqual([UInt8(ascii: ".")]) {
                trailingSlash = true
            } else if segment.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                if !segments.isEmpty { segments.removeLast() }
                trailingSlash = true
            } else {
                segments.append(segment)
            }
        }
        var out: [UInt8] = [UInt8(ascii: "/")]
        out.reserveCapacity(bytes.count)
        for (position, segment) in segments.enumerated() {
            if position > 0 { out.append(UInt8(ascii: "/")) }
            out.append(contentsOf: segment)
        }
        if trailingSlash, !segments.isEmpty { out.append(UInt8(ascii: "/")) }
        out.append(contentsOf: bytes[queryStart...])
        return .success(String(decoding: out, as: UTF8.self))
    }

    /// RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func upperHex(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
    }

    /// Whether `path` (normalized, without its query) is under `prefix` on a segment
    /// boundary: `/api` matches `/api` and `/api/x`, never `/api-internal`; a prefix that
    /// ends with `/` (`/`, `/api/`) matches by plain prefix. Compared byte for byte:
    /// `String.hasPrefix` compares characters, and a combining mark after a `/`
    /// (`/admin/\u{301}x`) makes `/\u{301}` one character, which no `/admin/` prefix
    /// matched, while the app's router, reading bytes, sees a path under `/admin/`
    /// (found by scripts/fuzz).
    public static func hasPrefix(_ path: Substring, _ prefix: String) -> Bool {
        guard path.utf8.starts(with: prefix.utf8) else { return false }
        if prefix.utf8.last == UInt8(ascii: "/") { return true }
        guard let next = path.utf8.dropFirst(prefix.utf8.count).first else { return true }
        return next == UInt8(ascii: "/") || next == UInt8(ascii: "?")
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Files that hold keys, tokens, credentials or the registry, written so that nobody else
/// on the host can read them and no link planted beside them is followed: the bytes go to a
/// new file with a random name in the same directory, created exclusively
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 from the start, never wider for a moment),
/// synced, then renamed over the target. A symlink at the target is replaced, not written
/// through; readers never see half a file.
public enum SecretFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Writes `bytes` to `path` with `mode` (0600 unless the file is public, like a CA
    /// bundle: 0644).
    public static func write(_ bytes: some Collection<UInt8>, to path: String, mode: mode_t = 0o600) throws(Failure) {
        var random = SystemRandomNumberGenerator()
        let temporary = path + ".tmp-" + String(random.next(), radix: 36)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(errorText())") }
        var ok = true
        let data = Array(bytes)
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = systemWrite(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    return
                }
                offset += written
            }
        }
        // The mode asked for, whatever the umask took away or left.
        if ok { ok = fchmod(fd, mode) == 0 && fsync(fd) == 0 }
        let failure = errorText()
        close(fd)
        guard ok else {
            unlink(temporary)
            throw Failure(description: "cannot write \(temporary): \(failure)")
        }
        guard rename(temporary, path) == 0 else {
            let failure = errorText()
            unlink(temporary)
            throw Failure(description: "cannot rename \(temporary) to \(path): \(failure)")
        }
    }

    public static func write(_ text: String, to path: String, mode: mode_t = 0o600) throws(Failure) {
        try write(text.utf8, to: path, mode: mode)
    }

    /// Creates `path` (and its missing parents) as a directory only its owner may enter
    /// (0700); an existing one is narrowed to 0700.
    public static func createPrivateDirectory(_ path: String) throws(Failure) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0, errno != EEXIST {
                throw Failure(description: "cannot create \(prefix): \(errorText())")
            }
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & mode_t(S_IFMT) == mode_t(S_IFDIR) else {
            throw Failure(description: "\(path) is not a directory")
        }
        guard chmod(path, 0o700) == 0 else { throw Failure(description: "cannot chmod \(path): \(errorText())") }
    }

    /// Makes sure `path` exists as a regular file with mode 0600 (created empty if it is
    /// missing; narrowed if it is wider), for files another library opens (SQLite, which
    /// gives its journals the database file's mode).
    public static func ensurePrivate(_ path: String) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path): \(errorText())") }
        defer { close(fd) }
        guard fchmod(fd, 0o600) == 0 else { throw Failure(description: "cannot chmod \(path): \(errorText())") }
    }

    /// Narrows an existing regular file to 0600 (a journal SQLite made before this did);
    /// nothing when it is missing.
    public static func narrowIfPresent(_ path: String) throws(Failure) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & mode_t(S_IFMT) == mode_t(S_IFREG) else {
            throw Failure(description: "\(path) is not a regular file")
        }
        guard chmod(path, 0o600) == 0 else { throw Failure(description: "cannot chmod \(path): \(errorText())") }
    }

    /// The token in `path` (surrounding whitespace trimmed); when the file is missing and
    /// `create`, a new one of 256 random bits (64 hex digits) written there with mode 0600.
    /// An existing token file that others may read is refused: the token must be rotated.
    public static func token(at path: String, create: Bool) throws(Failure) -> String {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & 0o077 == 0 else {
                throw Failure(
                    description:
                        "\(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))): chmod 600 it, and replace the token"
                )
            }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Failure(description: "cannot read \(path): \(errorText())") }
            defer { close(fd) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while bytes.count <= 65_536 {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count >= 0 else { throw Failure(description: "cannot read \(path): \(errorText())") }
                if count == 0 { break }
                bytes += chunk[0..<count]
            }
            let token = String(decoding: bytes, as: UTF8.self).filter { !$0.isWhitespace }
            guard !token.isEmpty else { throw Failure(description: "token file \(path) is empty") }
            return token
        }
        guard create, errno == ENOENT else {
            throw Failure(description: "cannot read token file \(path): \(errorText())")
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<4).map { _ in
            let hex = String(generator.next(), radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        try write(token + "\n", to: path)
        return token
    }

    /// Whether two secrets are equal, in time that depends only on their lengths (a
    /// bearer token compared byte by byte with an early exit leaks its prefix by timing).
    public static func constantTimeEqual(_ a: some StringProtocol, _ b: some StringProtocol) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in x.indices { difference |= x[i] ^ y[i] }
        return difference == 0
    }

    private static func errorText() -> String {
        String(cString: strerror(errno))
    }
}

/// The C `write`, under a name `SecretFile.write` does not shadow.
private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}

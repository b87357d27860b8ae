import Foundation
import NIOCore
import NIOPosix

/// What curl got: the final response's status and headers, its body, and every status line
/// seen (interim 100 Continue included).
struct CurlResult {
    var exitCode: Int32
    var status: Int
    var statusLines: [String]
    var headers: [(String, String)]
    var body: Data
    var stderr: String

    var text: String { String(decoding: body, as: UTF8.self) }

    func header(_ name: String) -> String? {
        headers.last { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// Runs the real curl binary: the tests' HTTP/1.1 and HTTP/2 client.
enum Curl {
    static func run(_ arguments: [String], timeout: Int = 10) async throws -> CurlResult {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mw-curl-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let headerFile = directory.appendingPathComponent("headers").path
        let bodyFile = directory.appendingPathComponent("body").path
        let stderrFile = directory.appendingPathComponent("stderr").path
        _ = FileManager.default.createFile(atPath: bodyFile, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile, contents: nil)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Bodies go to stdout, not `-o`: with a URL glob (`?n=[1-20]`) `-o` takes only the
        // first answer's body, and a check of `text` would see one answer of twenty.
        process.arguments = ["curl", "-sS", "--max-time", String(timeout), "-D", headerFile] + arguments
        process.standardError = FileHandle(forWritingAtPath: stderrFile)
        let bodyHandle = FileHandle(forWritingAtPath: bodyFile)
        process.standardOutput = bodyHandle
        let exitCode = try await Command.wait(for: process)
        try? bodyHandle?.close()
        let headerText = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
        var statusLines: [String] = []
        var headers: [(String, String)] = []
        var status = 0
        for rawLine in headerText.replacingOccurrences(of: "\r", with: "").split(separator: "\n") {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.hasPrefix("HTTP/") {
                statusLines.append(line)
                let parts = line.split(separator: " ")
                status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
                if status >= 200 { headers.removeAll() }
            } else if let colon = line.firstIndex(of: ":") {
                headers.append(
                    (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
                )
            }
        }
        return CurlResult(
            exitCode: exitCode,
            status: status,
            statusLines: statusLines,
            headers: headers,
            body: FileManager.default.contents(atPath: bodyFile) ?? Data(),
            stderr: (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? ""
        )
    }

    static func get(_ url: String, _ extra: [String] = []) async throws -> CurlResult {
        try await run(extra + [url])
    }
}

/// Sends raw bytes on a TCP connection and returns everything received until the peer
/// closes (or `timeout` passes): for requests no well-behaved client would send.
enum RawClient {
    static func exchange(
        port: Int,
        send chunks: [String],
        pauseBetween: TimeAmount = .zero,
        timeout: TimeAmount = .seconds(5)
    ) async throws -> String {
        let collector = Collector()
        let channel = try await ClientBootstrap(group: TestMesh.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        for chunk in chunks {
            try await channel.writeAndFlush(ByteBuffer(string: chunk))
            if pauseBetween > .zero {
                try await Task.sleep(for: .nanoseconds(pauseBetween.nanoseconds))
            }
        }
        let closed = channel.closeFuture
        let timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        try? await closed.get()
        timer.cancel()
        return try await channel.eventLoop.submit { collector.text }.get()
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var text = ""

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            text += String(buffer: unwrapInboundIn(data))
        }
    }
}

/// Runs a helper program (a Python peer, say) and returns its exit code and output.
enum Command {
    /// Starts `process` and waits for it without blocking a thread.
    static func wait(for process: Process) async throws -> Int32 {
        let status = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { process in continuation.resume(returning: process.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        release(process)
        return status
    }

    /// Frees what Foundation keeps for an ended `process`. swift-corelibs-foundation's
    /// Process and its run-loop source retain each other until `waitUntilExit()` clears
    /// the source, so a process only ever awaited through `terminationHandler` or
    /// `isRunning` is never freed, nor the file handles it holds (its log file, a pipe's
    /// read end): a descriptor per process. Over the suite they reached ~1360,
    /// where Foundation's own scan of /proc/self/fd in `Process.run()` copies a whole
    /// 256-byte `d_name` from the end of readdir's 32 KiB buffer and crashes (SIGSEGV in
    /// memcpy). Returns at once: the process has ended.
    static func release(_ process: Process) {
        guard process.processIdentifier > 0, !process.isRunning else { return }
        process.waitUntilExit()
    }

    static func run(_ arguments: [String]) async throws -> (exitCode: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let exitCode = try await wait(for: process)
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (exitCode, output)
    }
}

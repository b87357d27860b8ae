import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
/// `/v3/lease/...`, `/v3/watch`), over AsyncHTTPClient.
///
/// Why the gateway and not gRPC: every etcd since 3.3 serves it on the client port, it
/// needs no generated code (grpc-swift 2 would add SwiftProtobuf, protoc and etcd's protos
/// to the build, which CI pays on every run), and the controller already speaks HTTP with
/// AsyncHTTPClient. What the gateway costs (JSON and base64 instead of protobuf) is paid on
/// control-plane writes, never on a request's path.
///
/// Endpoints are tried in order from the last one that answered: a member that refuses the
/// connection, or says it has no leader, is passed over for the next. A read also moves on
/// when a member does not answer within `requestTimeout`; a write does not: it may have
/// been committed (etcd's own "request timed out" may still commit), and sent again to
/// another member it would land twice or report a conflict with itself, so it fails with
/// `EtcdError.Code.indeterminate` and the next call starts at the next member.
/// Keys are UTF-8 strings; values are bytes.
package final class EtcdClient: Sendable {
    package struct Options: Sendable {
        /// `http://host:port` or `https://host:port`, one per member.
        package var endpoints: [String]
        /// For `https://` endpoints: the CA that signed etcd's certificates, and this
        /// client's certificate and key when etcd asks for one (`--client-cert-auth`).
        package var caFile: String?
        package var certificateFile: String?
        package var keyFile: String?
        /// How long one request may take on one member before the next is tried.
        package var requestTimeout: Duration = .seconds(3)

        package init(endpoints: [String]) { self.endpoints = endpoints }
    }

    package struct KeyValue: Sendable, Hashable {
        package var key: String
        package var value: [UInt8]
        package var createRevision: Int64
        package var modRevision: Int64
        package var version: Int64
        package var lease: Int64
    }

    /// A condition of a transaction (etcd's `Compare`): the key's `target` compared with
    /// a value. A key that does not exist has create and mod revision and version 0.
    package struct Compare: Sendable {
        package enum Target: Sendable {
            case version(Int64)
            case createRevision(Int64)
            case modRevision(Int64)
            case value([UInt8])
        }
        package enum Result: String, Sendable {
            case equal = "EQUAL"
            case greater = "GREATER"
            case less = "LESS"
            case notEqual = "NOT_EQUAL"
        }
        package var key: String
        package var result: Result
        package var target: Target

        package init(_ key: String, _ result: Result, _ target: Target) {
            self.key = key
            self.result = result
            self.target = target
        }
    }

    /// An operation of a transaction.
    package enum Operation: Sendable {
        case put(key: String, value: [UInt8], lease: Int64 = 0)
        /// One key, or every key in `[key, end)` when `end` is given.
        case delete(key: String, end: String? = nil)
        case range(key: String, end: String? = nil)
    }

    package struct TransactionResult: Sendable {
        package var succeeded: Bool
        package var revision: Int64
        /// The keys each `range` operation of the branch that ran read, in order.
        package var ranges: [[KeyValue]]
        /// Whether the branch that ran changed anything (a put, or a delete that found a
        /// key): a transaction that did not makes no revision of its own, and `revision`
        /// is then the cluster's, perhaps of a key no watch of ours will ever show.
        package var changed: Bool
    }

    package struct WatchEvent: Sendable, Hashable {
        package enum Kind: Sendable { case put, delete }
        package var kind: Kind
        /// For a delete, the key with its value gone (and its mod revision the deletion's).
        package var keyValue: KeyValue
    }

    /// One response of a watch stream: the events of one revision or more, in order.
    package struct WatchResponse: Sendable {
        package var revision: Int64
        package var events: [WatchEvent]
    }

    private let options: Options
    private let http: HTTPClient
    private let logger: Logger
    /// The endpoint that answered last, tried first.
    private let preferred = Mutex(0)

    package init(options: Options, logger: Logger) throws {
        guard !options.endpoints.isEmpty else { throw EtcdError.invalid("no etcd endpoint given") }
        for endpoint in options.endpoints {
            guard let url = URL(string: endpoint), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
                throw EtcdError.invalid("\(endpoint.debugDescription) is not an http:// or https:// etcd endpoint")
            }
        }
        let schemes = Set(options.endpoints.compactMap { URL(string: $0)?.scheme })
        guard schemes.count == 1 else {
            throw EtcdError.invalid("the etcd endpoints mix http:// and https://: give one scheme")
        }
        guard (options.certificateFile == nil) == (options.keyFile == nil) else {
            throw EtcdError.invalid("an etcd client certificate needs its key, and a key its certificate")
        }
        self.options = options
        self.logger = logger
        var configuration = HTTPClient.Configuration()
        configuration.timeout.connect = .seconds(2)
        // Reads of a watch stream wait as long as nothing changes.
        configuration.timeout.read = nil
        configuration.redirectConfiguration = .disallow
        if options.endpoints.contains(where: { $0.hasPrefix("https://") }) {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca = options.caFile { tls.trustRoots = .file(ca) }
            if let certificate = options.certificateFile, let key = options.keyFile {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                tls.privateKey = .file(key)
            }
            configuration.tlsConfiguration = tls
        }
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    package func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: key-value

    /// The keys in `[key, end)` (or `key` alone), at `revision` (nil: the latest).
    package func range(
        _ key: String,
        end: String? = nil,
        revision: Int64? = nil,
        limit: Int? = nil
    ) async throws -> (keyValues: [KeyValue], revision: Int64, more: Bool) {
        var body: [String: Any] = ["key": Self.base64(key)]
        if let end { body["range_end"] = Self.base64(end) }
        if let revision { body["revision"] = String(revision) }
        if let limit { body["limit"] = String(limit) }
        let answer = try await call("/v3/kv/range", body)
        return (try Self.keyValues(answer["kvs"]), try Self.revision(answer), answer["more"] as? Bool ?? false)
    }

    /// Every key under `prefix`, read in pages at one revision.
    package func rangePrefix(_ prefix: String) async throws -> (keyValues: [KeyValue], revision: Int64) {
        let end = Self.prefixEnd(prefix)
        var all: [KeyValue] = []
        // A page is at most 64 MiB (`call`): one too large for that is read again in
        // halves (documents are bounded by etcd's request size, 1.5 MiB by default).
        var limit = 500
        var start = prefix
        var revision: Int64?
        while true {
            let page: (keyValues: [KeyValue], revision: Int64, more: Bool)
            do {
                page = try await range(start, end: end, revision: revision, limit: limit)
            } catch is NIOTooManyBytesError where limit > 1 {
                limit /= 2
                continue
            }
            revision = revision ?? page.revision
            all += page.keyValues
            // The next page starts right after the last key read (the key with a NUL appended).
            guard page.more, let last = page.keyValues.last else { return (all, revision ?? page.revision) }
            start = last.key + "\u{0}"
        }
    }

    @discardableResult
    package func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) async throws -> Int64 {
        var body: [String: Any] = ["key": Self.base64(key), "value": Data(value).base64EncodedString()]
        if lease != 0 { body["lease"] = String(lease) }
        return try Self.revision(try await call("/v3/kv/put", body, write: true))
    }

    @discardableResult
    package func delete(_ key: String, end: String? = nil) async throws -> Int64 {
        var body: [String: Any] = ["key": Self.base64(key)]
        if let end { body["range_end"] = Self.base64(end) }
        return try Self.revision(try await call("/v3/kv/deleterange", body, write: true))
    }

    /// Runs `success` if every comparison holds, else `failure`, atomically.
    package func transaction(
        if compares: [Compare],
        then success: [Operation],
        else failure: [Operation] = []
    ) async throws -> TransactionResult {
        let body: [String: Any] = [
            "compare": compares.map(Self.json),
            "success": success.map(Self.json),
            "failure": failure.map(Self.json),
        ]
        let answer = try await call("/v3/kv/txn", body, write: true)
        let succeeded = answer["succeeded"] as? Bool ?? false
        var ranges: [[KeyValue]] = []
        var changed = false
        for response in answer["responses"] as? [[String: Any]] ?? [] {
            if let range = response["response_range"] as? [String: Any] {
                ranges.append(try Self.keyValues(range["kvs"]))
            }
            if response["response_put"] != nil { changed = true }
            if let delete = response["response_delete_range"] as? [String: Any], Self.int64(delete["deleted"]) ?? 0 > 0
            {
                changed = true
            }
        }
        return TransactionResult(
            succeeded: succeeded,
            revision: try Self.revision(answer),
            ranges: ranges,
            changed: changed
        )
    }

    // MARK: leases

    /// A new lease of `ttl` seconds; its id.
    package func grantLease(ttl: Int64) async throws -> Int64 {
        let answer = try await call("/v3/lease/grant", ["TTL": String(ttl)])
        if let error = answer["error"] as? String, !error.isEmpty { throw EtcdError.server(error) }
        guard let id = Self.int64(answer["ID"]), id != 0 else { throw EtcdError.malformed("lease grant without an ID") }
        return id
    }

    /// Renews a lease; its remaining TTL in seconds, 0 when it is gone (expired or revoked).
    package func keepAlive(_ lease: Int64) async throws -> Int64 {
        let answer = try await call("/v3/lease/keepalive", ["ID": String(lease)])
        // The gateway answers a stream of one message: `{"result": {...}}`.
        let result = answer["result"] as? [String: Any] ?? answer
        return Self.int64(result["TTL"]) ?? 0
    }

    package func revokeLease(_ lease: Int64) async throws {
        _ = try await call("/v3/lease/revoke", ["ID": String(lease)])
    }

    // MARK: watch

    /// The changes to keys under `prefix` after `revision`, as they are committed. The
    /// stream ends with an error when the connection does (the caller watches again from
    /// the last revision it saw), and with `EtcdError.compacted` when etcd no longer has the
    /// history after `revision` (the caller reads everything again).
    package func watch(prefix: String, after revision: Int64) -> AsyncThrowingStream<WatchResponse, any Error> {
        let (stream, continuation) = AsyncThrowingStream<WatchResponse, any Error>.makeStream()
        let body: [String: Any] = [
            "create_request": [
                "key": Self.base64(prefix),
                "range_end": Self.base64(Self.prefixEnd(prefix)),
                "start_revision": String(revision + 1),
                "progress_notify": true,
            ] as [String: Any]
        ]
        let data: Data
        do {
            data = try JSONSerialization.data(withJSONObject: body)
        } catch {
            continuation.finish(throwing: error)
            return stream
        }
        let task = Task {
            do {
                let response = try await self.open("/v3/watch", data, write: false, watch: true)
                var pending = ByteBuffer()
                // Where the search for the next newline goes on (a large message arrives in
                // many chunks: each is scanned once).
                var scanned = 0
                for try await chunk in response.body {
                    pending.writeImmutableBuffer(chunk)
                    // The gateway writes one JSON object per message, each ending in a newline.
                    while let newline = pending.readableBytesView.dropFirst(scanned).firstIndex(of: UInt8(ascii: "\n"))
                    {
                        scanned = 0
                        let length = newline - pending.readerIndex
                        let line = pending.readBytes(length: length + 1) ?? []
                        guard let message = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                            continue
                        }
                        if let error = message["error"] as? [String: Any] {
                            throw EtcdError.server(error["message"] as? String ?? "watch failed")
                        }
                        guard let result = message["result"] as? [String: Any] else { continue }
                        if let compacted = Self.int64(result["compact_revision"]), compacted > 0 {
                            throw EtcdError.compacted(compacted)
                        }
                        if result["canceled"] as? Bool == true {
                            throw EtcdError.server(result["cancel_reason"] as? String ?? "watch canceled")
                        }
                        let events = try (result["events"] as? [[String: Any]] ?? []).map { event in
                            WatchEvent(
                                kind: event["type"] as? String == "DELETE" ? .delete : .put,
                                keyValue: try Self.keyValue(event["kv"] as? [String: Any] ?? [:])
                            )
                        }
                        let header = result["header"] as? [String: Any] ?? [:]
                        continuation.yield(WatchResponse(revision: Self.int64(header["revision"]) ?? 0, events: events))
                    }
                    scanned = pending.readableBytes
                    pending.discardReadBytes()
                    // A message is a few kilobytes; one this large is not etcd's.
                    if pending.readableBytes > 64 << 20 { throw EtcdError.malformed("a watch message over 64 MiB") }
                }
                continuation.finish(throwing: EtcdError.unavailable("the watch stream ended"))
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    // MARK: transport

    private func call(_ path: String, _ body: [String: Any], write: Bool = false) async throws -> [String: Any] {
        let response = try await open(path, try JSONSerialization.data(withJSONObject: body), write: write)
        // The head came within the request timeout; the body must too (a member that
        // stalls mid-answer would otherwise hold the call, a keep-alive or a commit, for
        // ever: reads of a connection have no timeout, for the watches).
        let timeout = options.requestTimeout
        let bytes = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask { try await response.body.collect(upTo: 64 << 20) }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let bytes = first else {
                throw write
                    ? EtcdError(code: .indeterminate, message: "\(path): the answer stalled: the write may have landed")
                    : EtcdError.unavailable("\(path): the answer stalled")
            }
            return bytes
        }
        guard let answer = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any]
        else {
            throw EtcdError.malformed("\(path) answered \(response.status.code) without JSON")
        }
        guard response.status == .ok else {
            let message = answer["message"] as? String ?? answer["error"] as? String ?? "\(response.status.code)"
            throw EtcdError.server(message)
        }
        return answer
    }

    /// Sends the request to the preferred member, then to each other one, and returns the
    /// first answer's head: a member that cannot be reached or that says it has no leader
    /// (it is cut off from the quorum) is passed over. A `write` that reached a member and
    /// got no answer, or a failure other than "no leader", is not sent again (see the
    /// type's comment): it fails as indeterminate, and the next call starts at the next
    /// member. A `watch` asks to be ended when its member loses the leader (etcd's
    /// `hasleader` metadata), so that it is opened again on one that has it.
    private func open(
        _ path: String,
        _ data: Data,
        write: Bool,
        watch: Bool = false
    ) async throws
        -> HTTPClientResponse
    {
        let count = options.endpoints.count
        let first = preferred.withLock { $0 }
        var lastError: (any Error)?
        for attempt in 0..<count {
            let index = (first + attempt) % count
            var request = HTTPClientRequest(url: options.endpoints[index] + path)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            if watch { request.headers.add(name: "grpc-metadata-hasleader", value: "true") }
            request.body = .bytes(ByteBuffer(bytes: data))
            /// The next call starts at the next member: this one took a write it did not
            /// answer, and may be the one cut off.
            func indeterminate(_ reason: String) -> EtcdError {
                preferred.withLock { $0 = (index + 1) % count }
                return EtcdError(
                    code: .indeterminate,
                    message: "\(options.endpoints[index]) did not answer \(path) (\(reason)): the write may have landed"
                )
            }
            do {
                let response = try await http.execute(request, timeout: .init(options.requestTimeout))
                if [.serviceUnavailable, .gatewayTimeout, .internalServerError].contains(response.status) {
                    // Read the reason, and try the next member: this one may be the one cut off.
                    let bytes = try await response.body.collect(upTo: 1 << 20)
                    let answer =
                        (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any]
                    let message = answer?["message"] as? String ?? "\(response.status.code)"
                    if write && !message.contains("no leader") { throw indeterminate(message) }
                    lastError = EtcdError.unavailable(message)
                    continue
                }
                if attempt != 0 { preferred.withLock { $0 = index } }
                return response
            } catch let error as HTTPClientError where error == .cancelled && Task.isCancelled {
                throw CancellationError()
            } catch let error as EtcdError {
                throw error
            } catch  where write && !Self.notConnected(error) {
                throw indeterminate("\(error)")
            } catch {
                logger.debug(
                    "etcd member did not answer",
                    metadata: ["endpoint": "\(options.endpoints[index])", "error": "\(error)"]
                )
                lastError = error
            }
        }
        throw EtcdError.unavailable("no etcd member answered \(path): \(lastError.map { "\($0)" } ?? "")")
    }

    /// Whether `error` says the connection was never made (so nothing was sent).
    private static func notConnected(_ error: any Error) -> Bool {
        if error is NIOConnectionError { return true }
        if let error = error as? IOError { return [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH].contains(error.errnoCode) }
        if let error = error as? HTTPClientError { return error == .connectTimeout }
        if case .connectTimeout = error as? ChannelError { return true }
        return false
    }

    // MARK: JSON

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// The end of the range of keys that start with `prefix` (etcd's `WithPrefix`): the
    /// prefix with its last byte incremented.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xFF {
                bytes[bytes.count - 1] = last + 1
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.removeLast()
        }
        return "\u{0}"
    }

    /// int64 fields come as JSON strings from the gateway (proto3's JSON mapping).
    static func int64(_ value: Any?) -> Int64? {
        if let text = value as? String { return Int64(text) }
        if let number = value as? NSNumber { return number.int64Value }
        return nil
    }

    private static func revision(_ answer: [String: Any]) throws -> Int64 {
        guard let header = answer["header"] as? [String: Any], let revision = int64(header["revision"]) else {
            throw EtcdError.malformed("an answer without a revision")
        }
        return revision
    }

    private static func keyValues(_ value: Any?) throws -> [KeyValue] {
        try (value as? [[String: Any]] ?? []).map(keyValue)
    }

    private static func keyValue(_ object: [String: Any]) throws -> KeyValue {
        guard let key = (object["key"] as? String).flatMap({ Data(base64Encoded: $0) }) else {
            throw EtcdError.malformed("a key-value without a key")
        }
        let value: Data
        if let text = object["value"] as? String {
            guard let decoded = Data(base64Encoded: text) else {
                throw EtcdError.malformed("a value that is not base64")
            }
            value = decoded
        } else {
            value = Data()
        }
        return KeyValue(
            key: String(decoding: key, as: UTF8.self),
            value: Array(value),
            createRevision: int64(object["create_revision"]) ?? 0,
            modRevision: int64(object["mod_revision"]) ?? 0,
            version: int64(object["version"]) ?? 0,
            lease: int64(object["lease"]) ?? 0
        )
    }

    private static func json(_ compare: Compare) -> [String: Any] {
        var object: [String: Any] = ["key": base64(compare.key), "result": compare.result.rawValue]
        switch compare.target {
        case .version(let version):
            object["target"] = "VERSION"
            object["version"] = String(version)
        case .createRevision(let revision):
            object["target"] = "CREATE"
            object["create_revision"] = String(revision)
        case .modRevision(let revision):
            object["target"] = "MOD"
            object["mod_revision"] = String(revision)
        case .value(let value):
            object["target"] = "VALUE"
            object["value"] = Data(value).base64EncodedString()
        }
        return object
    }

    private static func json(_ operation: Operation) -> [String: Any] {
        switch operation {
        case .put(let key, let value, let lease):
            var put: [String: Any] = ["key": base64(key), "value": Data(value).base64EncodedString()]
            if lease != 0 { put["lease"] = String(lease) }
            return ["request_put": put]
        case .delete(let key, let end):
            var delete: [String: Any] = ["key": base64(key)]
            if let end { delete["range_end"] = base64(end) }
            return ["request_delete_range": delete]
        case .range(let key, let end):
            var range: [String: Any] = ["key": base64(key)]
            if let end { range["range_end"] = base64(end) }
            return ["request_range": range]
        }
    }
}

/// Why an etcd call failed.
package struct EtcdError: Error, CustomStringConvertible, Sendable {
    package enum Code: Sendable, Equatable {
        /// No member answered, or none that is part of a quorum: nothing was written.
        case unavailable
        /// A write reached a member that did not answer it: it may have landed or not.
        case indeterminate
        /// etcd refused the request (its message says why).
        case server
        /// The watch's start revision was compacted away.
        case compacted(Int64)
        case malformed
        case invalid
    }
    package let code: Code
    package let message: String

    static func unavailable(_ message: String) -> EtcdError { EtcdError(code: .unavailable, message: message) }
    static func server(_ message: String) -> EtcdError { EtcdError(code: .server, message: message) }
    static func compacted(_ revision: Int64) -> EtcdError {
        EtcdError(code: .compacted(revision), message: "etcd compacted its history up to revision \(revision)")
    }
    static func malformed(_ message: String) -> EtcdError { EtcdError(code: .malformed, message: message) }
    static func invalid(_ message: String) -> EtcdError { EtcdError(code: .invalid, message: message) }

    package var description: String { "etcd: \(message)" }
}

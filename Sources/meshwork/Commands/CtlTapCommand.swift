import ArgumentParser
import Foundation
import MeshworkModel
import NIOCore
import NIOHTTP1

/// The filters `ctl tap` and `ctl top` share, sent to the controller's `/v1/tap`.
struct TapOptions: ParsableArguments {
    @Argument(help: "The service whose instances are tapped.") var service: String
    @Option(name: .long, help: "Only requests whose path starts with this.") var path: String?
    @Option(name: .long, help: "Only this status class (5xx) or code (503).") var status: String?
    @Option(name: .long, help: "Only this method.") var method: String?
    @Option(name: .long, help: "inbound (calls to the service) or outbound (calls it makes).") var direction: String?
    @Option(name: .long, help: "Only calls from or to this service.") var peer: String?
    @Option(name: .long, help: "Share of matching requests to show (0 < s <= 1).") var sample: Double?
    @Option(name: .long, help: "At most this many events per second per sidecar.") var rate: Double?

    var query: String {
        var items = [URLQueryItem(name: "service", value: service)]
        func add(_ name: String, _ value: String?) {
            if let value { items.append(URLQueryItem(name: name, value: value)) }
        }
        add("path", path)
        add("status", status)
        add("method", method)
        add("direction", direction)
        add("peer", peer)
        add("sample", sample.map { String($0) })
        add("rate", rate.map { String($0) })
        var components = URLComponents()
        components.queryItems = items
        return components.percentEncodedQuery ?? ""
    }
}

/// Reads `/v1/tap` line by line: the first line says which instances are tapped.
enum TapStream {
    struct Start: Decodable {
        var tapping: [String]
        var failed: [String: String]
    }

    static func open(
        _ options: CtlOptions,
        _ tap: TapOptions,
        limit: Int?,
        onStart: (Start) throws -> Void,
        onEvent: (String, TapEvent?) throws -> Bool
    ) async throws {
        var path = "/v1/tap?" + tap.query
        if let limit { path += "&limit=\(limit)" }
        struct Enough: Error {}
        let decoder = JSONDecoder()
        var started = false
        do {
            try await options.stream(path) { line in
                // The controller's keepalive.
                if line.isEmpty { return }
                if !started, let start = try? decoder.decode(Start.self, from: Data(line.utf8)) {
                    started = true
                    try onStart(start)
                    return
                }
                if try !onEvent(line, try? decoder.decode(TapEvent.self, from: Data(line.utf8))) { throw Enough() }
            }
        } catch is Enough {
        }
    }
}

/// `meshwork ctl tap SERVICE [--path P] [--status 5xx] ...`: a live stream of the requests
/// the service's sidecars carry (metadata only: never bodies or headers), sampled and
/// rate-limited in the sidecars.
struct CtlTap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "Stream live request metadata from a service's sidecars."
    )
    @OptionGroup var options: CtlOptions
    @OptionGroup var tap: TapOptions
    @Option(name: .long, help: "Stop after this many requests.") var limit: Int?

    func run() async throws {
        try await TapStream.open(
            options,
            tap,
            limit: limit,
            onStart: { start in
                var text =
                    "tapping \(start.tapping.count) instance(s) of \(tap.service): \(start.tapping.joined(separator: ", "))"
                for (id, reason) in start.failed.sorted(by: { $0.key < $1.key }) {
                    text += "\n  cannot tap \(id): \(reason)"
                }
                FileHandle.standardError.write(Data((text + "\n").utf8))
                if options.output == .table {
                    print(
                        Self.row(["TIME", "DIR", "SOURCE", "TARGET", "METHOD", "PATH", "STATUS", "LATENCY", "ERROR"])
                    )
                }
            },
            onEvent: { line, event in
                guard options.output == .table else {
                    print(line)
                    return true
                }
                guard let event else { return true }  // {"dropped": N} and the like
                print(
                    Self.row([
                        String(event.time.dropFirst(11)), event.direction == "inbound" ? "in" : "out", event.source,
                        event.target, event.method, event.path, String(event.status),
                        GoldenColumns.ms(event.latencyMs), event.meshError ?? "",
                    ])
                )
                fflush(nil)
                return true
            }
        )
    }

    static func row(_ cells: [String]) -> String {
        let widths = [13, 4, 14, 14, 7, 28, 7, 10, 0]
        return zip(cells, widths).map { cell, width in
            width == 0 ? cell : cell.padding(toLength: max(width, cell.count + 1), withPad: " ", startingAt: 0)
        }.joined()
    }
}

/// `meshwork ctl top SERVICE`: a live view of the service's busiest routes (method and
/// path, by caller), refreshed every second, from a tap.
struct CtlTop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live, refreshing view of a service's busiest routes."
    )
    @OptionGroup var options: CtlOptions
    @OptionGroup var tap: TapOptions
    @Option(name: .long, help: "Seconds between refreshes.") var interval: Double = 1
    @Option(name: .long, help: "Stop after this many refreshes (default: until Ctrl-C).") var iterations: Int?
    @Option(name: .long, help: "Rows shown.") var rows: Int = 20

    func run() async throws {
        let table = RouteTable()
        let isTerminal = isatty(1) == 1
        let every = interval
        let frames = iterations
        let shown = rows
        let service = tap.service
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await TapStream.open(
                    options,
                    tap,
                    limit: nil,
                    onStart: { start in table.note(tapping: start.tapping.count) },
                    onEvent: { _, event in
                        if let event { table.add(event) }
                        return !Task.isCancelled
                    }
                )
            }
            group.addTask {
                var frame = 0
                while frames.map({ frame < $0 }) ?? true {
                    try await Task.sleep(for: .milliseconds(Int(every * 1000)))
                    frame += 1
                    let text = table.render(service: service, rows: shown)
                    print((isTerminal ? "\u{1B}[H\u{1B}[2J" : "") + text, terminator: isTerminal ? "" : "\n")
                    fflush(nil)
                }
            }
            // The view decides when to stop; the tap then goes away with it.
            try await group.next()
            group.cancelAll()
        }
    }
}

/// What `ctl top` has seen per route since it started: count, successes, latencies.
final class RouteTable: @unchecked Sendable {
    private struct Key: Hashable {
        var source: String
        var method: String
        var path: String
    }

    private struct Route {
        var count = 0
        var failures = 0
        /// Bounded: the last 1000 latencies of the route, for its percentiles.
        var latencies: [Double] = []
    }

    private let lock = NSLock()
    private var routes: [Key: Route] = [:]
    private var tapping = 0
    private var total = 0
    private let started = Date()

    func note(tapping count: Int) {
        lock.withLock { tapping = count }
    }

    func add(_ event: TapEvent) {
        lock.withLock {
            let key = Key(
                source: event.direction == "inbound" ? event.source : "-> \(event.target)",
                method: event.method,
                path: event.path
            )
            var route = routes[key] ?? Route()
            route.count += 1
            if event.status >= 500 { route.failures += 1 }
            route.latencies.append(event.latencyMs)
            if route.latencies.count > 1000 { route.latencies.removeFirst(route.latencies.count - 1000) }
            routes[key] = route
            total += 1
        }
    }

    func render(service: String, rows: Int) -> String {
        lock.withLock {
            let seconds = max(0.001, Date().timeIntervalSince(started))
            var out = [["SOURCE", "METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "P50", "P99"]]
            for (key, route) in routes.sorted(by: { ($0.value.count, $1.key.path) > ($1.value.count, $0.key.path) })
                .prefix(rows)
            {
                let sorted = route.latencies.sorted()
                func percentile(_ p: Double) -> Double {
                    sorted.isEmpty
                        ? 0 : sorted[min(sorted.count - 1, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1)]
                }
                out.append([
                    key.source, key.method, key.path, String(route.count),
                    String(format: "%.1f", Double(route.count) / seconds),
                    String(format: "%.2f%%", 100 * Double(route.count - route.failures) / Double(route.count)),
                    GoldenColumns.ms(percentile(50)), GoldenColumns.ms(percentile(99)),
                ])
            }
            return "meshwork top \(service)  \(tapping) instance(s)  \(total) requests in \(Int(seconds))s\n"
                + Table.render(out)
        }
    }
}

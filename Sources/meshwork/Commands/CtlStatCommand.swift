import ArgumentParser
import Foundation
import MeshworkModel
import NIOHTTP1

/// `meshwork ctl stat [SERVICE] [--window 1m]`: each service's golden metrics from the
/// sidecars' reports (server side), like `linkerd viz stat`; with a service, its instances.
struct CtlStat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Request rate, success rate and latency per service, or per instance of one service."
    )
    @OptionGroup var options: CtlOptions
    @Argument(help: "Show this service's instances.") var service: String?
    @Option(name: .long, help: "The window: 10s to 10m.") var window: String = "1m"

    func run() async throws {
        var path = "/v1/stats?window=\(window)"
        if let service { path += "&service=\(service)" }
        let data = try await options.call(.GET, path)
        let stats = try JSONDecoder().decode(StatsResponse.self, from: data)
        try options.print(data) { _ in
            var rows = [["NAME", "REQUESTS", "RPS", "SUCCESS", "P50", "P95", "P99"]]
            for entry in stats.services {
                if service == nil {
                    rows.append([entry.service] + GoldenColumns.cells(entry.metrics))
                } else {
                    rows += entry.instances.map { [$0.instance] + GoldenColumns.cells($0.metrics) }
                }
            }
            return rows
        }
    }
}

/// `meshwork ctl edges [--window 1m]`: who calls whom, with volume, success, latency, the
/// caller's identity and whether the hop is mTLS.
struct CtlEdges: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edges",
        abstract: "Who calls whom: volume, success, latency, identity, mTLS."
    )
    @OptionGroup var options: CtlOptions
    @Option(name: .long, help: "The window: 10s to 10m.") var window: String = "1m"

    func run() async throws {
        let data = try await options.call(.GET, "/v1/edges?window=\(window)")
        let edges = try JSONDecoder().decode(EdgesResponse.self, from: data)
        try options.print(data) { _ in
            [["SOURCE", "TARGET", "REQUESTS", "RPS", "SUCCESS", "P50", "P95", "P99", "MTLS"]]
                + edges.edges.map { edge in
                    [edge.source, edge.target] + GoldenColumns.cells(edge.metrics) + [edge.mtls ? "yes" : "no"]
                }
        }
    }
}

enum GoldenColumns {
    static func cells(_ metrics: GoldenMetrics) -> [String] {
        [
            String(metrics.requests),
            String(format: "%.1f", metrics.rps),
            String(format: "%.2f%%", metrics.successRate * 100),
            ms(metrics.p50Ms), ms(metrics.p95Ms), ms(metrics.p99Ms),
        ]
    }

    static func ms(_ value: Double?) -> String {
        guard let value else { return "-" }
        return value < 10 ? String(format: "%.2fms", value) : String(format: "%.0fms", value)
    }
}

import AsyncHTTPClient
import MeshworkModel
import NIOCore
import NIOHTTP1
import NIOPosix

/// Checks the local app the way the config says: an HTTP GET (2xx/3xx passes) or a TCP
/// connection. Thresholds turn single results into a stable health.
struct HealthChecker: Sendable {
    let config: HealthCheckConfig
    let app: HostPort
    let http: HTTPClient
    let group: any EventLoopGroup

    func check() async -> Bool {
        let timeout = TimeAmount.nanoseconds(config.timeout.nanoseconds)
        switch config.kind {
        case .none:
            return true
        case .http:
            do {
                let request = HTTPClientRequest(url: "http://\(app.host):\(app.port)\(config.path)")
                let response = try await http.execute(request, timeout: timeout)
                _ = try? await response.body.collect(upTo: 64 * 1024)
                return (200..<400).contains(response.status.code)
            } catch {
                return false
            }
        case .tcp:
            do {
                let channel = try await ClientBootstrap(group: group)
                    .connectTimeout(timeout)
                    .connect(host: app.host, port: app.port)
                    .get()
                try? await channel.close()
                return true
            } catch {
                return false
            }
        }
    }
}

/// Consecutive results to health: `unhealthyThreshold` failures make it unhealthy,
/// `healthyThreshold` passes make it healthy; it starts as `starting` until the first
/// verdict.
struct HealthState: Sendable {
    let healthyThreshold: Int
    let unhealthyThreshold: Int
    private(set) var health: InstanceHealth = .starting
    private var passes = 0
    private var failures = 0

    init(healthyThreshold: Int, unhealthyThreshold: Int) {
        self.healthyThreshold = healthyThreshold
        self.unhealthyThreshold = unhealthyThreshold
    }

    /// Records one result; returns the new health when it changed.
    mutating func record(_ passed: Bool) -> InstanceHealth? {
        if passed {
            passes += 1
            failures = 0
            if health != .healthy, passes >= healthyThreshold {
                health = .healthy
                return health
            }
        } else {
            failures += 1
            passes = 0
            if health != .unhealthy, failures >= unhealthyThreshold {
                health = .unhealthy
                return health
            }
        }
        return nil
    }
}

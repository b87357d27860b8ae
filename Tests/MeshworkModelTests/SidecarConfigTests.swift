import MeshworkModel
import MeshworkTraffic
import Testing

@Suite("Sidecar config")
struct SidecarConfigTests {
    let full = """
        service: web
        threads: 2
        admin: 127.0.0.1:9901
        tls: {ca: ca.pem, cert: web.pem, key: web.key}
        inbound:
          listen: 127.0.0.1:15001
          app: 127.0.0.1:8080
          protocol: h2c
        upstreams:
          - listen: 127.0.0.1:9001
            cluster: orders
          - listen: "[::1]:9002"
            cluster: orders
            protocol: tcp
        httpProxy:
          listen: 127.0.0.1:9000
        clusters:
          - name: orders
            endpoints: [127.0.0.1:15002, "localhost:15003"]
            connectTimeout: 250ms
            requestTimeout: 2m
        timeouts: {headerRead: 5s, idle: 1h, drain: 30s}
        limits: {maxHeaderBytes: 8192}
        """

    @Test func readsEveryField() throws {
        let config = try SidecarConfig.load(yaml: full)
        #expect(config.service == "web")
        #expect(config.threads == 2)
        #expect(config.admin == HostPort(host: "127.0.0.1", port: 9901))
        #expect(config.tls == TLSFiles(ca: "ca.pem", cert: "web.pem", key: "web.key"))
        #expect(config.inbound?.protocol == .h2c)
        #expect(config.inbound?.app == HostPort(host: "127.0.0.1", port: 8080))
        #expect(config.upstreams.count == 2)
        #expect(config.upstreams[1].listen == HostPort(host: "::1", port: 9002))
        #expect(config.upstreams[1].protocol == .tcp)
        #expect(config.httpProxy?.domain == "mesh")
        let orders = try #require(config.cluster(named: "orders"))
        #expect(orders.protocol == .mesh)
        #expect(
            orders.endpoints.map(\.address) == [
                HostPort(host: "127.0.0.1", port: 15002), HostPort(host: "localhost", port: 15003),
            ]
        )
        #expect(orders.connectTimeout.duration == .milliseconds(250))
        #expect(orders.requestTimeout.duration == .seconds(120))
        #expect(config.timeouts.idle.duration == .seconds(3600))
        #expect(config.limits.maxHeaderBytes == 8192)
    }

    @Test func readsTrafficPolicies() throws {
        let config = try SidecarConfig.load(
            yaml: """
                zone: eu-1a
                inbound:
                  listen: 127.0.0.1:0
                  app: 127.0.0.1:8080
                  rateLimit: {requestsPerSecond: 100}
                  concurrencyLimit: {minConcurrency: 5, maxConcurrency: 50}
                clusters:
                  - name: orders
                    protocol: http1
                    endpoints: [127.0.0.1:1, {address: 127.0.0.1:2, weight: 3, zone: eu-1b}]
                    balancer: maglev
                    hashOn: header:X-User
                    subset: {size: 1, clientIndex: 0, clientCount: 4}
                    outlierDetection: {consecutive5xx: 2, baseEjectionTime: 5s}
                    circuitBreakers: {maxRequests: 10}
                    retries: {attempts: 1, on: [5xx], perTryTimeout: 200ms}
                    adaptiveThrottling: on
                  - name: plain
                    protocol: http1
                    outlierDetection: off
                    retries: off
                """
        )
        #expect(config.zone == "eu-1a")
        #expect(config.inbound?.rateLimit == RateLimitConfig(requestsPerSecond: 100, burst: 100))
        #expect(config.inbound?.concurrencyLimit?.minConcurrency == 5)
        #expect(config.inbound?.concurrencyLimit?.maxConcurrency == 50)
        let orders = try #require(config.cluster(named: "orders"))
        #expect(
            orders.endpoints[1]
                == EndpointConfig(address: HostPort(host: "127.0.0.1", port: 2), weight: 3, zone: "eu-1b")
        )
        #expect(orders.balancer == .maglev)
        #expect(orders.hashOn == .header("x-user"))
        #expect(orders.subset == SubsetConfig(size: 1, clientIndex: 0, clientCount: 4))
        #expect(orders.outlierDetection?.consecutive5xx == 2)
        #expect(orders.outlierDetection?.baseEjectionTime == .seconds(5))
        #expect(orders.outlierDetection?.interval == .seconds(10))
        #expect(orders.circuitBreakers.maxRequests == 10)
        #expect(orders.circuitBreakers.maxConnections == 1024)
        #expect(orders.retries.attempts == 1)
        #expect(orders.retries.on == [.any5xx])
        #expect(orders.retries.perTryTimeout == .milliseconds(200))
        #expect(orders.adaptiveThrottling == AdaptiveThrottlePolicy())
        let plain = try #require(config.cluster(named: "plain"))
        #expect(plain.outlierDetection == nil)
        #expect(plain.retries.attempts == 0)
        #expect(plain.adaptiveThrottling == nil)
    }

    @Test func readsTracingAndAccessLog() throws {
        let config = try SidecarConfig.load(
            yaml: "tracing: {endpoint: 'http://127.0.0.1:4318/v1/traces', sampleRate: 0.5}\naccessLog: stdout"
        )
        #expect(config.tracing.endpoint == "http://127.0.0.1:4318/v1/traces" && config.tracing.sampleRate == 0.5)
        #expect(config.accessLog == .stdout)
        #expect(try SidecarConfig.load(yaml: "accessLog: /var/log/mw.log").accessLog == .file("/var/log/mw.log"))
        #expect(try SidecarConfig.load(yaml: "accessLog: off").accessLog == nil)
        #expect(!SidecarConfig().tracing.isEnabled && SidecarConfig().accessLog == nil)
    }

    @Test func emptyFileGivesDefaults() throws {
        let config = try SidecarConfig.load(yaml: "")
        #expect(config == SidecarConfig())
        #expect(config.admin?.port == 9901)
        #expect(config.timeouts.headerRead.duration == .seconds(10))
    }

    private func errors(_ yaml: String) -> [ConfigError] {
        do {
            _ = try SidecarConfig.load(yaml: yaml)
            return []
        } catch {
            return error.errors
        }
    }

    @Test(arguments: [
        ("servce: x", "servce", "unknown field"),
        ("threads: many", "threads", "expected an integer"),
        ("threads: -1", "threads", "between 0 and 1024"),
        ("admin: 127.0.0.1", "admin", "expected host:port"),
        ("admin: 127.0.0.1:70000", "admin", "port must be a number"),
        ("admin: ::1:80", "admin", "IPv6 addresses need brackets"),
        (
            "clusters: [{name: a, endpoints: [1.2.3.4:80], connectTimeout: soon}]", "clusters[0].connectTimeout",
            "expected a duration"
        ),
        ("clusters: [{name: a, protocol: http3}]", "clusters[0].protocol", "must be one of mesh, http1, h2c"),
        ("clusters: [{endpoints: []}]", "clusters[0].name", "required field is missing"),
        ("clusters: [{name: a, protocol: http1, endpoints: [1.2.3.4:0]}]", "clusters[0].endpoints[0]", "real port"),
        ("clusters: [{name: a}]", "clusters[0].protocol", "needs the tls section"),
        ("clusters: {name: a}", "clusters", "expected a list"),
        ("upstreams: [{listen: 127.0.0.1:1, cluster: nope}]", "upstreams[0].cluster", "no cluster named \"nope\""),
        ("inbound: {listen: 127.0.0.1:1}", "inbound.app", "required field is missing"),
        ("inbound: {listen: 127.0.0.1:9901, app: 127.0.0.1:80}", "inbound.listen", "already used by admin"),
        ("tls: {ca: a.pem, cert: b.pem}", "tls.key", "required field is missing"),
        ("limits: {maxHeaderBytes: 10}", "limits.maxHeaderBytes", "between 1024"),
        ("timeouts: {drain: -1s}", "timeouts.drain", "expected a duration"),
        // Too long for 64-bit nanoseconds: refused with the path, never a crash.
        ("timeouts: {drain: 1e30s}", "timeouts.drain", "at most 87600h"),
        (
            "clusters: [{name: a, protocol: http1, endpoints: [1.2.3.4:80], requestTimeout: 87601h}]",
            "clusters[0].requestTimeout", "at most 87600h"
        ),
        ("service: [a, b]", "service", "expected a string"),
        ("{unclosed", "", "not valid YAML"),
        ("clusters: [{name: a, protocol: http1, balancer: fastest}]", "clusters[0].balancer", "must be one of"),
        ("clusters: [{name: a, protocol: http1, hashOn: cookie}]", "clusters[0].hashOn", "header:<name> or source-ip"),
        (
            "clusters: [{name: a, protocol: http1, retries: {on: [connect-failure, 418]}}]",
            "clusters[0].retries.on[1]",
            "must be one of"
        ),
        (
            "clusters: [{name: a, protocol: http1, outlierDetection: {maxEjectionPercent: 150}}]",
            "clusters[0].outlierDetection.maxEjectionPercent", "between 0.0 and 100.0"
        ),
        ("clusters: [{name: a, protocol: http1, outlierDetection: maybe}]", "clusters[0].outlierDetection", "on, off"),
        (
            "clusters: [{name: a, protocol: http1, subset: {size: 3, clientIndex: 5, clientCount: 5}}]",
            "clusters[0].subset.clientIndex", "below clientCount"
        ),
        (
            "clusters: [{name: a, protocol: http1, endpoints: [{address: 1.2.3.4:80, weight: heavy}]}]",
            "clusters[0].endpoints[0].weight", "expected a number"
        ),
        (
            "inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2, rateLimit: {burst: 3}}",
            "inbound.rateLimit.requestsPerSecond", "required"
        ),
        ("tracing: {endpoint: collector:4318}", "tracing.endpoint", "expected an http:// or https://"),
        ("tracing: {sampleRate: 2}", "tracing.sampleRate", "between 0.0 and 1.0"),
        ("tracing: {exportInterval: 10ms}", "tracing.exportInterval", "between 100ms and 60s"),
        ("tracing: {sampler: always}", "tracing.sampler", "unknown field"),
        ("accessLog: [a]", "accessLog", "expected a string"),
    ])
    func refusesBadFieldsWithPathAndReason(yaml: String, path: String, reason: String) {
        let found = errors(yaml)
        #expect(found.contains { $0.path == path && $0.reason.contains(reason) }, "got \(found)")
    }

    @Test func reportsEveryProblemAtOnce() {
        let found = errors("threads: x\nadmin: nope\nclusters: [{name: a, protocol: bad}]")
        #expect(Set(found.map(\.path)) == ["threads", "admin", "clusters[0].protocol"])
    }

    @Test func errorDescriptionNamesPath() {
        let error = ConfigErrors([ConfigError(path: "clusters[0].name", reason: "required field is missing")])
        #expect(error.description.contains("clusters[0].name: required field is missing"))
    }

    @Test(arguments: [("250ms", 250), ("5s", 5000), ("2m", 120_000), ("1h", 3_600_000), ("1.5s", 1500)])
    func durations(text: String, milliseconds: Int) throws {
        let parsed = try #require(DurationText.parse(text))
        #expect(parsed == .milliseconds(milliseconds))
    }

    @Test func durationsPrintBack() {
        #expect(DurationText.format(.milliseconds(250)) == "250ms")
        #expect(DurationText.format(.seconds(90)) == "90s")
        #expect(DurationText.format(.seconds(120)) == "2m")
        #expect(DurationText.format(.seconds(7200)) == "2h")
    }
}

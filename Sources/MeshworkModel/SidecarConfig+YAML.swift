import MeshworkTraffic
import Yams

extension SidecarConfig {
    /// Parses and validates a sidecar config file. Throws `ConfigErrors` listing every bad
    /// field with its path and the reason.
    public static func load(yaml text: String) throws(ConfigErrors) -> SidecarConfig {
        let reader = ConfigReader()
        var config = SidecarConfig()
        if let root = reader.parse(text) {
            config.read(root, reader)
            if reader.errors.isEmpty {
                config.validate(reader)
            }
        }
        guard reader.errors.isEmpty else { throw ConfigErrors(reader.errors) }
        return config
    }

    private mutating func read(_ root: Node, _ reader: ConfigReader) {
        let known: Set = [
            "service", "zone", "threads", "admin", "adminTokenFile", "controller", "instance", "healthCheck",
            "discover", "tls",
            "inbound", "upstreams", "httpProxy", "clusters", "timeouts",
            "limits", "listeners", "edgeTelemetry", "tracing", "accessLog",
        ]
        guard let fields = reader.mapping(root, "", known: known) else { return }
        if let value = fields.string("service") { service = value }
        if let value = fields.string("zone") { zone = value }
        if let value = fields.int("threads", range: 0...1024) { threads = value }
        if let value = fields.bool("edgeTelemetry") { edgeTelemetry = value }
        if let node = fields.node("accessLog") {
            if case .scalar(let scalar) = node, ["", "~", "null", "off", "false"].contains(scalar.string) {
                accessLog = nil
            } else if let text = reader.string(node, "accessLog") {
                accessLog = AccessLogTarget(text)
            }
        }
        if let f = reader.mapping(
            fields.node("tracing"),
            "tracing",
            known: ["endpoint", "sampleRate", "exportInterval", "maxBufferedSpans"]
        ) {
            if let endpoint = f.string("endpoint") {
                if endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") {
                    tracing.endpoint = endpoint
                } else {
                    reader.fail(
                        f.path("endpoint"),
                        "expected an http:// or https:// OTLP/HTTP URL, found \"\(endpoint)\""
                    )
                }
            }
            if let rate = f.double("sampleRate", range: 0...1) { tracing.sampleRate = rate }
            if let interval = f.duration("exportInterval") {
                if interval.duration >= .milliseconds(100), interval.duration <= .seconds(60) {
                    tracing.exportInterval = interval
                } else {
                    reader.fail(f.path("exportInterval"), "must be between 100ms and 60s")
                }
            }
            if let n = f.int("maxBufferedSpans", range: 1...1_000_000) { tracing.maxBufferedSpans = n }
        }
        if let node = fields.node("admin") {
            if case .scalar(let scalar) = node, ["", "~", "null", "off", "false"].contains(scalar.string) {
                admin = nil
            } else {
                admin = reader.address(node, "admin")
            }
        }
        if let value = fields.string("adminTokenFile") { adminTokenFile = value }
        if let tlsFields = reader.mapping(fields.node("tls"), "tls", known: ["ca", "cert", "key"]) {
            let ca = tlsFields.required("ca", tlsFields.string("ca"))
            let cert = tlsFields.required("cert", tlsFields.string("cert"))
            let key = tlsFields.required("key", tlsFields.string("key"))
            if let ca, let cert, let key { tls = TLSFiles(ca: ca, cert: cert, key: key) }
        }
        if let f = reader.mapping(
            fields.node("inbound"),
            "inbound",
            known: [
                "listen", "app", "protocol", "maxIdleConnections", "connectTimeout", "requestTimeout",
                "concurrencyLimit", "rateLimit",
            ]
        ) {
            let listen = f.required("listen", f.address("listen"))
            let app = f.required("app", f.address("app"))
            if let listen, let app {
                var value = InboundConfig(listen: listen, app: app)
                if let p = f.choice("protocol", as: AppProtocol.self) { value.protocol = p }
                if let n = f.int("maxIdleConnections", range: 0...100_000) { value.maxIdleConnections = n }
                if let d = f.duration("connectTimeout") { value.connectTimeout = d }
                if let d = f.duration("requestTimeout") { value.requestTimeout = d }
                if let limit = Self.readConcurrencyLimit(f.node("concurrencyLimit"), f.path("concurrencyLimit"), reader)
                {
                    value.concurrencyLimit = limit
                }
                if let limit = Self.readRateLimit(f.node("rateLimit"), f.path("rateLimit"), reader) {
                    value.rateLimit = limit
                }
                inbound = value
            }
        }
        for (path, node) in reader.sequence(fields.node("upstreams"), "upstreams") {
            guard let f = reader.mapping(node, path, known: ["listen", "cluster", "protocol"]) else { continue }
            let listen = f.required("listen", f.address("listen"))
            let cluster = f.required("cluster", f.string("cluster"))
            if let listen, let cluster {
                var value = UpstreamConfig(listen: listen, cluster: cluster)
                if let p = f.choice("protocol", as: ListenerProtocol.self) { value.protocol = p }
                upstreams.append(value)
            }
        }
        if let f = reader.mapping(fields.node("httpProxy"), "httpProxy", known: ["listen", "domain"]) {
            if let listen = f.required("listen", f.address("listen")) {
                var value = HTTPProxyConfig(listen: listen)
                if let d = f.string("domain") { value.domain = d }
                httpProxy = value
            }
        }
        for (path, node) in reader.sequence(fields.node("clusters"), "clusters") {
            let known: Set = [
                "name", "endpoints", "protocol", "connectTimeout", "requestTimeout", "idleTimeout",
                "maxIdleConnections", "maxConcurrentStreams", "maxRequestsPerConnection", "balancer", "hashOn",
                "zoneAware", "subset",
                "outlierDetection", "circuitBreakers", "retries", "adaptiveThrottling", "slowStart",
            ]
            guard let f = reader.mapping(node, path, known: known) else { continue }
            guard let name = f.required("name", f.string("name")) else { continue }
            var value = ClusterConfig(name: name)
            for (endpointPath, endpoint) in reader.sequence(f.node("endpoints"), f.path("endpoints")) {
                if let endpoint = Self.readEndpoint(endpoint, endpointPath, reader) { value.endpoints.append(endpoint) }
            }
            if let p = f.choice("protocol", as: EndpointProtocol.self) { value.protocol = p }
            if let d = f.duration("idleTimeout") { value.idleTimeout = d }
            if let n = f.int("maxIdleConnections", range: 0...100_000) { value.maxIdleConnections = n }
            if let n = f.int("maxConcurrentStreams", range: 1...10_000) { value.maxConcurrentStreams = n }
            if let n = f.int("maxRequestsPerConnection", range: 1...ClusterConfig.streamIDsPerConnection) {
                value.maxRequestsPerConnection = n
            }
            if let s = reader.mapping(
                f.node("subset"),
                f.path("subset"),
                known: ["size", "clientIndex", "clientCount"]
            ) {
                let size = s.required("size", s.int("size", range: 1...100_000))
                let index = s.required("clientIndex", s.int("clientIndex", range: 0...1_000_000))
                let count = s.required("clientCount", s.int("clientCount", range: 1...1_000_000))
                if let size, let index, let count {
                    if index >= count {
                        reader.fail(s.path("clientIndex"), "must be below clientCount (\(count)), found \(index)")
                    }
                    value.subset = SubsetConfig(size: size, clientIndex: index, clientCount: count)
                }
            }
            Self.readPolicy(f, reader, into: &value.policy)
            clusters.append(value)
        }
        if let f = reader.mapping(
            fields.node("controller"),
            "controller",
            known: [
                "url", "tokenFile", "cacheFile", "joinTokenFile", "certificateTTL", "caFile", "telemetryInterval",
                "startupWait", "maxStaleness",
            ]
        ) {
            if let url = f.required("url", f.string("url")) {
                var urls = [url]
                switch ControllerLink.urls(url) {
                case .success(let split): urls = split
                case .failure(let error): reader.fail(f.path("url"), error.reason)
                }
                var link = ControllerLink(url: urls.joined(separator: ","))
                link.tokenFile = f.string("tokenFile")
                link.cacheFile = f.string("cacheFile")
                link.joinTokenFile = f.string("joinTokenFile")
                link.caFile = f.string("caFile")
                link.certificateTTL = f.duration("certificateTTL")
                if let interval = f.duration("telemetryInterval") {
                    if interval.duration >= .milliseconds(100), interval.duration <= .seconds(60) {
                        link.telemetryInterval = interval
                    } else {
                        reader.fail(f.path("telemetryInterval"), "must be between 100ms and 60s")
                    }
                }
                link.maxStaleness = f.duration("maxStaleness")
                if let wait = f.duration("startupWait") {
                    if wait.duration <= .seconds(600) {
                        link.startupWait = wait
                    } else {
                        reader.fail(f.path("startupWait"), "must be at most 10m")
                    }
                }
                if let ttl = link.certificateTTL, ttl.duration < .seconds(3) {
                    reader.fail(f.path("certificateTTL"), "must be at least 3s")
                }
                controller = link
            }
        }
        if let f = reader.mapping(
            fields.node("instance"),
            "instance",
            known: ["id", "address", "zone", "weight", "version", "metadata", "ttl"]
        ) {
            if let v = f.string("id") {
                if let reason = Names.invalidID(v) { reader.fail(f.path("id"), reason) }
                instance.id = v
            }
            if let v = f.string("address") { instance.address = v }
            if let v = f.string("zone") { instance.zone = v }
            if let n = f.int("weight", range: 0...65535) { instance.weight = n }
            if let v = f.string("version") { instance.version = v }
            if let m = f.node("metadata")?.mapping {
                for (key, value) in m {
                    if let k = key.string, let v = value.scalar?.string { instance.metadata[k] = v }
                }
            }
            if let d = f.duration("ttl") {
                if d.duration >= .seconds(1) {
                    instance.ttl = d
                } else {
                    reader.fail(f.path("ttl"), "must be at least 1s")
                }
            }
        }
        if let f = reader.mapping(
            fields.node("healthCheck"),
            "healthCheck",
            known: ["kind", "path", "interval", "timeout", "healthyThreshold", "unhealthyThreshold"]
        ) {
            if let k = f.choice("kind", as: HealthCheckConfig.Kind.self) { healthCheck.kind = k }
            if let p = f.string("path") {
                if p.hasPrefix("/") {
                    healthCheck.path = p
                    if f.node("kind") == nil { healthCheck.kind = .http }
                } else {
                    reader.fail(f.path("path"), "must start with /")
                }
            }
            if let d = f.duration("interval") { healthCheck.interval = d }
            if let d = f.duration("timeout") { healthCheck.timeout = d }
            if let n = f.int("healthyThreshold", range: 1...100) { healthCheck.healthyThreshold = n }
            if let n = f.int("unhealthyThreshold", range: 1...100) { healthCheck.unhealthyThreshold = n }
        }
        for (path, node) in reader.sequence(fields.node("discover"), "discover") {
            guard let name = reader.string(node, path) else { continue }
            if let reason = Names.invalidServiceName(name) { reader.fail(path, reason) }
            discover.append(name)
        }
        if let f = reader.mapping(
            fields.node("timeouts"),
            "timeouts",
            known: ["headerRead", "tlsHandshake", "idle", "keepAlive", "drain"]
        ) {
            if let d = f.duration("headerRead") { timeouts.headerRead = d }
            if let d = f.duration("tlsHandshake") { timeouts.tlsHandshake = d }
            if let d = f.duration("idle") { timeouts.idle = d }
            if let d = f.duration("keepAlive") {
                if d.duration >= .milliseconds(100) {
                    timeouts.keepAlive = d
                } else {
                    reader.fail(f.path("keepAlive"), "must be at least 100ms")
                }
            }
            if let d = f.duration("drain") { timeouts.drain = d }
        }
        if let f = reader.mapping(fields.node("limits"), "limits", known: ["maxHeaderBytes", "maxConnections"]) {
            if let n = f.int("maxHeaderBytes", range: 1024...(1 << 20)) { limits.maxHeaderBytes = n }
            if let n = f.int("maxConnections", range: 1...1_000_000) { limits.maxConnections = n }
        }
        for (path, node) in reader.sequence(fields.node("listeners"), "listeners") {
            guard let listener = Self.readGatewayListener(node, path, reader) else { continue }
            // With a controller, the HTTPRoutes naming the gateway may be all its routes.
            if listener.protocol != .tcp, listener.routes.isEmpty, controller == nil {
                reader.fail(
                    reader.join(path, "routes"),
                    "an \(listener.protocol.rawValue) listener needs routes (or a controller, whose HTTPRoutes name the gateway)"
                )
            }
            listeners.append(listener)
        }
        // Services the public listeners route to are discovered like any upstream.
        if controller != nil {
            for service in listeners.flatMap(\.services)
            where !discover.contains(service) && !clusters.contains(where: { $0.name == service }) {
                discover.append(service)
            }
        }
    }

    private static func readGatewayListener(
        _ node: Node,
        _ path: String,
        _ reader: ConfigReader
    )
        -> GatewayListenerConfig?
    {
        let known: Set = ["name", "listen", "protocol", "certificates", "routes", "service"]
        guard let f = reader.mapping(node, path, known: known) else { return nil }
        let name = f.required("name", f.string("name"))
        let listen = f.required("listen", f.address("listen"))
        guard let name, let listen else { return nil }
        var value = GatewayListenerConfig(name: name, listen: listen)
        if let p = f.choice("protocol", as: GatewayProtocol.self) { value.protocol = p }
        for (certificatePath, node) in reader.sequence(f.node("certificates"), f.path("certificates")) {
            guard let c = reader.mapping(node, certificatePath, known: ["cert", "key", "serverNames"]) else { continue }
            let cert = c.required("cert", c.string("cert"))
            let key = c.required("key", c.string("key"))
            guard let cert, let key else { continue }
            var certificate = GatewayCertificate(cert: cert, key: key)
            for (namePath, nameNode) in reader.sequence(c.node("serverNames"), c.path("serverNames")) {
                if let serverName = reader.string(nameNode, namePath) { certificate.serverNames.append(serverName) }
            }
            value.certificates.append(certificate)
        }
        for (routePath, node) in reader.sequence(f.node("routes"), f.path("routes")) {
            guard let r = reader.mapping(node, routePath, known: ["match", "service"]) else { continue }
            guard let service = r.required("service", r.string("service")) else { continue }
            if let reason = Names.invalidServiceName(service) { reader.fail(r.path("service"), reason) }
            var route = GatewayRoute(service: service)
            if let m = reader.mapping(
                r.node("match"),
                r.path("match"),
                known: ["host", "hosts", "pathPrefix", "headers"]
            ) {
                if let host = m.string("host") { route.hosts.append(host.lowercased()) }
                for (hostPath, hostNode) in reader.sequence(m.node("hosts"), m.path("hosts")) {
                    if let host = reader.string(hostNode, hostPath) { route.hosts.append(host.lowercased()) }
                }
                if let prefix = m.string("pathPrefix") {
                    if prefix.hasPrefix("/") {
                        route.pathPrefix = prefix
                    } else {
                        reader.fail(m.path("pathPrefix"), "must start with /, found \"\(prefix)\"")
                    }
                }
                if let headers = m.node("headers") {
                    if let mapping = headers.mapping {
                        for (key, value) in mapping {
                            guard let name = key.string, let text = reader.string(value, m.path("headers") + "." + name)
                            else { continue }
                            route.headers[name.lowercased()] = text
                        }
                    } else {
                        reader.fail(m.path("headers"), "expected a mapping of header names to values")
                    }
                }
            }
            value.routes.append(route)
        }
        if let service = f.string("service") {
            if let reason = Names.invalidServiceName(service) { reader.fail(f.path("service"), reason) }
            value.service = service
        }
        switch value.protocol {
        case .tcp:
            if value.service == nil { reader.fail(f.path("service"), "a tcp listener needs the service it sends to") }
            if !value.routes.isEmpty { reader.fail(f.path("routes"), "a tcp listener has no routes (use service)") }
        case .http, .https:
            if value.service != nil {
                reader.fail(f.path("service"), "only tcp listeners name one service; use routes")
            }
        }
        if value.protocol == .https, value.certificates.isEmpty {
            reader.fail(f.path("certificates"), "an https listener needs at least one certificate (cert, key)")
        }
        if value.protocol != .https, !value.certificates.isEmpty {
            reader.fail(f.path("certificates"), "only https listeners have certificates")
        }
        return value
    }

    /// Checks that hold across fields: references resolve, ports do not collide, TLS is
    /// present where a `mesh` cluster needs it.
    private func validate(_ reader: ConfigReader) {
        var names: [String: Int] = [:]
        for (index, cluster) in clusters.enumerated() {
            let path = "clusters[\(index)]"
            if cluster.name.isEmpty || cluster.name.contains(where: { $0.isWhitespace || $0 == "/" }) {
                reader.fail("\(path).name", "must be a non-empty name without spaces or slashes")
            }
            if let first = names[cluster.name] {
                reader.fail("\(path).name", "duplicate cluster \"\(cluster.name)\" (also clusters[\(first)])")
            } else {
                names[cluster.name] = index
            }
            if cluster.protocol == .mesh, tls == nil, controller?.joinTokenFile == nil {
                reader.fail(
                    "\(path).protocol",
                    "\"mesh\" needs the tls section (ca, cert, key) or controller.joinTokenFile"
                )
            }
            for (e, endpoint) in cluster.endpoints.enumerated() where endpoint.address.port == 0 {
                reader.fail("\(path).endpoints[\(e)]", "an endpoint needs a real port, not 0")
            }
        }
        for (index, name) in discover.enumerated() where names[name] != nil {
            reader.fail("discover[\(index)]", "\"\(name)\" is also a static cluster")
        }
        if controller?.joinTokenFile != nil, tls != nil {
            reader.fail("tls", "static TLS files and controller.joinTokenFile are exclusive: pick one identity")
        }
        if !discover.isEmpty, controller == nil {
            reader.fail("discover", "needs the controller section (url)")
        }
        for (index, upstream) in upstreams.enumerated()
        where names[upstream.cluster] == nil && !discover.contains(upstream.cluster) {
            reader.fail(
                "upstreams[\(index)].cluster",
                "no cluster named \"\(upstream.cluster)\" (static clusters or discover)"
            )
        }
        var listenerNames: Set<String> = []
        for (index, listener) in listeners.enumerated() {
            let path = "listeners[\(index)]"
            if !listenerNames.insert(listener.name).inserted {
                reader.fail("\(path).name", "duplicate listener \"\(listener.name)\"")
            }
            for service in listener.services where names[service] == nil && !discover.contains(service) {
                reader.fail(
                    listener.protocol == .tcp ? "\(path).service" : "\(path).routes",
                    "no cluster named \"\(service)\" (static clusters, or the controller section to discover it)"
                )
            }
        }
        if let app = inbound?.app, app.port == 0 {
            reader.fail("inbound.app", "the app needs a real port, not 0")
        }
        var listeners: [(String, HostPort)] = []
        if let admin { listeners.append(("admin", admin)) }
        if let inbound { listeners.append(("inbound.listen", inbound.listen)) }
        if let httpProxy { listeners.append(("httpProxy.listen", httpProxy.listen)) }
        for (index, upstream) in upstreams.enumerated() {
            listeners.append(("upstreams[\(index)].listen", upstream.listen))
        }
        for (index, listener) in self.listeners.enumerated() {
            listeners.append(("listeners[\(index)].listen", listener.listen))
        }
        var seen: [HostPort: String] = [:]
        for (path, address) in listeners where address.port != 0 {
            if let other = seen[address] {
                reader.fail(path, "\(address) is already used by \(other)")
            } else {
                seen[address] = path
            }
        }
    }
}

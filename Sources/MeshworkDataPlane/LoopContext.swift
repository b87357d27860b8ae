import Logging
import MeshworkModel
import MeshworkTraffic
import NIOCore
import Prometheus

/// Everything one event loop owns: its copy of every cluster (balancer and pools) and of
/// the app cluster. Touched only from its own loop, so nothing in it is locked.
final class LoopContext {
    let loop: any EventLoop
    let index: Int
    var clusters: [String: LoopCluster] = [:]
    var app: LoopCluster?
    var logger = Logger(label: "meshwork.sidecar") {
        didSet { inbound.logger = logger }
    }
    /// Authorization and the inbound limits in front of the app (this loop's share).
    let inbound = InboundGuard(logger: Logger(label: "meshwork.sidecar"))
    /// The mesh requires mTLS on every hop (`kind: Mesh`, pushed): plaintext callers are
    /// refused, and so are mesh calls this sidecar could only make in plaintext.
    var requireMTLS = false
    /// This loop's share of the edge telemetry.
    var edges: EdgeTelemetry.Shard?
    /// W3C trace context and span recording (nil: tracing is off).
    var tracer: LoopTracer?
    /// The taps watching this sidecar (nil: nobody taps, nothing to do per request).
    var taps: LoopTaps?
    /// This loop's access log (nil: off).
    var accessLog: AccessLogWriter?
    /// This sidecar's service, for access log lines.
    var service = "app"
    /// Each gateway listener's routes, by listener name (replaced on reload).
    var gatewayRoutes: [String: [GatewayRoute]] = [:]
    /// Each gateway listener's pushed routes (`kind: Gateway` parents), by listener name;
    /// asked before the listener's configured `gatewayRoutes`.
    var gatewayHTTPRoutes: [String: LoopGatewayRoutes] = [:]
    /// The routes of each called service that has some, by service name.
    var routes: [String: LoopRoutes] = [:]

    init(loop: any EventLoop, index: Int) {
        self.loop = loop
        self.index = index
    }

    func closeIdle() {
        for cluster in clusters.values { cluster.closeIdle() }
        app?.closeIdle()
        accessLog?.stop()
    }
}

/// The per-loop contexts, found by the loop a channel runs on. Built once before any
/// listener starts and never mutated afterwards; each context is only used on its loop.
final class LoopContexts: @unchecked Sendable {
    private let contexts: [ObjectIdentifier: LoopContext]
    let all: [LoopContext]

    init(_ contexts: [LoopContext]) {
        self.all = contexts
        var byLoop: [ObjectIdentifier: LoopContext] = [:]
        for context in contexts {
            byLoop[ObjectIdentifier(context.loop)] = context
        }
        self.contexts = byLoop
    }

    /// The context of `loop`; must be called on that loop.
    func context(for loop: any EventLoop) -> LoopContext {
        loop.preconditionInEventLoop()
        guard let context = contexts[ObjectIdentifier(loop)] else {
            preconditionFailure("event loop \(loop) is not one of the sidecar's loops")
        }
        return context
    }
}

import Hummingbird
import MeshworkModel

extension ControllerAPI {
    /// Golden metrics from the sidecars' reports: per service and instance (`/v1/stats`),
    /// per caller -> callee edge (`/v1/edges`), over `window` (`1m` by default, up to `10m`).
    func addTelemetryRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("stats") { request, _ in
            let window = try Self.window(request)
            let service = request.uri.queryParameters["service"].map(String.init)
            return try json(
                StatsResponse(windowSeconds: window, services: telemetry.stats(windowSeconds: window, service: service))
            )
        }
        v1.get("stats/series") { request, _ in
            let window = try Self.window(request, default: 600)
            return try json(
                SeriesResponse(
                    windowSeconds: window,
                    slotSeconds: TelemetryStore.slotSeconds,
                    services: telemetry.series(windowSeconds: window)
                )
            )
        }
        v1.get("edges") { request, _ in
            let window = try Self.window(request)
            return try json(EdgesResponse(windowSeconds: window, edges: telemetry.edges(windowSeconds: window)))
        }
    }

    static func window(_ request: Request, default seconds: Int = 60) throws -> Int {
        guard let text = request.uri.queryParameters["window"].map(String.init) else { return seconds }
        guard let duration = DurationText.parse(text), duration >= .seconds(10), duration <= .seconds(600) else {
            throw APIError(status: .badRequest, message: "window: expected a duration from 10s to 10m, got \"\(text)\"")
        }
        return Int(duration.components.seconds)
    }
}

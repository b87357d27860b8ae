import HTTPTypes
import Hummingbird
import MeshworkModel
import NIOHTTP1

extension ControllerAPI {
    /// Golden metrics from the sidecars' reports: per service and instance (`/v1/stats`),
    /// per caller -> callee edge (`/v1/edges`), over `window` (`1m` by default, up to `10m`).
    func addTelemetryRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("stats") { request, _ in
            let window = try Self.window(request)
            if let answer = await fromTelemetryHome(request) { return answer }
            let service = request.uri.queryParameters["service"].map(String.init)
            return try json(
                StatsResponse(windowSeconds: window, services: telemetry.stats(windowSeconds: window, service: service))
            )
        }
        v1.get("stats/series") { request, _ in
            let window = try Self.window(request, default: 600)
            if let answer = await fromTelemetryHome(request) { return answer }
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
            if let answer = await fromTelemetryHome(request) { return answer }
            return try json(EdgesResponse(windowSeconds: window, edges: telemetry.edges(windowSeconds: window)))
        }
    }

    /// A follower answers telemetry reads with the leader's (which has every report);
    /// nil when this controller is the home, or the leader does not answer.
    private func fromTelemetryHome(_ request: Request) async -> Response? {
        guard let relay, !TelemetryRelay.relayed(request), let home = await controller.telemetryHome(),
            let body = await relay.relay(
                .GET,
                to: home,
                path: request.uri.description,
                authorization: request.headers[.authorization],
                body: nil,
                expected: .ok
            )
        else { return nil }
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: body))
    }

    static func window(_ request: Request, default seconds: Int = 60) throws -> Int {
        guard let text = request.uri.queryParameters["window"].map(String.init) else { return seconds }
        guard let duration = DurationText.parse(text), duration >= .seconds(10), duration <= .seconds(600) else {
            throw APIError(status: .badRequest, message: "window: expected a duration from 10s to 10m, got \"\(text)\"")
        }
        return Int(duration.components.seconds)
    }
}

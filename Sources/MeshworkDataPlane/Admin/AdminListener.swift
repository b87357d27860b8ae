import MeshworkModel
import NIOCore

/// `admin`: health, readiness, metrics, config and tap; HTTPS when the sidecar has mesh TLS.
struct AdminListener: SidecarListener {
    let name = "admin"
    let address: HostPort
    let endpoints: AdminEndpoints
    let tls: MeshTLSSource?
    let settings: ProxySettings
    var carriesTraffic: Bool { false }

    func initializeConnection(_ channel: any Channel) throws {
        try AdminHandler.addPipeline(to: channel, endpoints: endpoints, tls: tls, settings: settings)
    }
}

import Foundation
import MeshworkDataPlane
import MeshworkDemo
import MeshworkModel
import NIOCore
import NIOPosix
import Testing

/// A sidecar with a controller accepts on its traffic listeners only once it has a
/// discovery state (issue 17, items 2 and 7): a caller that connects earlier waits in the
/// backlog and is answered with the state applied, instead of meeting an empty cluster
/// (503 `no_healthy_endpoint`); with no state at all it is answered after
/// `controller.startupWait`. `/ready` names what is missing.
@Suite("Readiness and the startup gate", .serialized)
struct ReadinessTests {
    /// `web` calling the discovered service `orders`, its controller unreachable: its state
    /// comes only from what the test applies.
    private func webSidecar(startupWait: TimeSpan) async throws -> RunningSidecar {
        var config = TestMesh.baseConfig("web")
        config.tls = TestMesh.tls("web")
        var link = ControllerLink(url: "http://127.0.0.1:\(TestMesh.refusingPort)")
        link.startupWait = startupWait
        config.controller = link
        config.discover = ["orders"]
        config.upstreams = [UpstreamConfig(listen: TestMesh.any(), cluster: "orders")]
        return try await TestMesh.startSidecar(config)
    }

    private func ready(_ sidecar: RunningSidecar) async throws -> CurlResult {
        try await Curl.get(sidecar.url("admin", "/ready"))
    }

    @Test func aCallerThatConnectsBeforeTheFirstStateIsAnsweredWithIt() async throws {
        let server = try await TestMesh.startServerSide()
        let web = try await webSidecar(startupWait: .seconds(30))
        let notReady = try await ready(web)
        #expect(notReady.status == 503 && notReady.text == "not ready: discovery\n", "\(notReady.text)")

        // Connected (the kernel's backlog) and the request written, before any state.
        let collector = RawClient.Collector()
        let channel = try await ClientBootstrap(group: TestMesh.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: TestMesh.loopback, port: web.port("upstream:orders"))
            .get()
        try await channel.writeAndFlush(
            ByteBuffer(string: "GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n")
        )
        // Nothing comes back while there is no state (an ungated listener answers at once,
        // with no_healthy_endpoint): watched for half a second.
        for _ in 0..<25 {
            let early = try await channel.eventLoop.submit { collector.text }.get()
            #expect(early.isEmpty, "answered before any state: \(early)")
            if !early.isEmpty { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        var instance = InstanceResource(
            id: "orders-1",
            service: "orders",
            address: TestMesh.loopback,
            port: server.sidecar.port("inbound")
        )
        instance.ttlSeconds = 0
        await web.sidecar.apply(
            DiscoveryState(revision: 1, services: [ServiceResource(name: "orders")], instances: [instance])
        )
        let timer = channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
        try? await channel.closeFuture.get()
        timer.cancel()
        let text = try await channel.eventLoop.submit { collector.text }.get()
        #expect(text.hasPrefix("HTTP/1.1 200"), "\(text)")
        #expect(server.app.requestCount == 1)
        let nowReady = try await ready(web)
        #expect(nowReady.status == 200 && nowReady.text == "ready\n", "\(nowReady.text)")
        await web.stop()
        await server.sidecar.stop()
        await server.app.stop()
    }

    @Test func withNoStateTheListenerAcceptsAfterTheStartupWait() async throws {
        let web = try await webSidecar(startupWait: .seconds(1))
        let started = ContinuousClock.now
        let answer = try await Curl.get(web.url("upstream:orders", "/"))
        let waited = ContinuousClock.now - started
        #expect(answer.status == 503 && answer.header("x-meshwork-error") == "no_healthy_endpoint")
        // Held until the wait was over, not answered at once.
        #expect(waited >= .milliseconds(800), "answered after \(waited)")
        #expect(try await ready(web).text == "not ready: discovery\n")
        await web.stop()
    }
}

import Foundation
import MeshworkDemo
import Testing

/// Secrets at rest: what a running controller and sidecar leave on disk is readable by
/// their owner only (the data directory 0700; the registry with the CA key, its journals,
/// the API token, a sidecar's identity and discovery cache 0600; only the public CA
/// bundle 0644), and a symlink planted where a sidecar writes is replaced, never written
/// through.
@Suite("Secrets at rest end to end", .serialized)
struct SecretsAtRestTests {
    private func mode(_ path: String) -> Int? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Int(info.st_mode & 0o7777)
    }

    private func isSymlink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK
    }

    @Test func everyFileWithAKeyOrCredentialIsOwnerOnlyAndPlantedLinksAreNotFollowed() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start(defaultTLS: true)
        let orders = try await TestMesh.startApp("orders-1")
        let directory = controller.dataDirectory + "-sidecar"
        var sidecars: [SidecarProcess] = []
        do {
            let data = controller.dataDirectory
            #expect(mode(data) == 0o700, "data directory")
            #expect(mode(data + "/registry.sqlite") == 0o600, "registry (holds the CA key)")
            for journal in ["-wal", "-shm"] where mode(data + "/registry.sqlite" + journal) != nil {
                #expect(mode(data + "/registry.sqlite" + journal) == 0o600, "registry\(journal)")
            }
            #expect(mode(data + "/token") == 0o600, "API token")
            #expect(mode(controller.caFile) == 0o644, "the CA bundle is public")

            // A link planted where the sidecar keeps its cache: replaced, not followed.
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let victim = directory + "/victim"
            try "victim\n".write(toFile: victim, atomically: true, encoding: .utf8)
            let cache = directory + "/orders.cache"
            try FileManager.default.createSymbolicLink(atPath: cache, withDestinationPath: victim)
            let sidecar = try await SidecarProcess.start(
                [
                    "--service", "orders", "--app-port", String(orders.port), "--controller", controller.url,
                    "--join-token-file", try await controller.joinTokenFile("orders"), "--cache-file", cache,
                ],
                waitFor: ["inbound", "admin"]
            )
            sidecars.append(sidecar)
            #expect(try await sidecar.waitForLog("registered"), "\(sidecar.log)")
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, isSymlink(cache) || mode(cache + ".identity") == nil {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(!isSymlink(cache), "the cache was written through the planted link")
            #expect(try String(contentsOfFile: victim, encoding: .utf8) == "victim\n", "the link's target changed")
            #expect(mode(cache) == 0o600, "discovery cache")
            #expect(mode(cache + ".identity") == 0o600, "identity (holds the workload key)")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
                $0.contains(".tmp")
            }
            #expect(leftovers.isEmpty, "temporary files left: \(leftovers)")
        } catch {
            for sidecar in sidecars { await sidecar.stop() }
            await orders.stop()
            await controller.stop()
            controller.remove()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        for sidecar in sidecars { await sidecar.stop() }
        await orders.stop()
        await controller.stop()
        controller.remove()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

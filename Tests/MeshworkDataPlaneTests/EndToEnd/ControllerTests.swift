import Foundation
import Testing

/// The controller as a real process: API validation and auth, watch streams and their
/// resume, leases, and restarts that keep what was acknowledged.
@Suite("Controller end to end")
struct ControllerTests {
    private func withController(_ body: (ControllerProcess) async throws -> Void) async throws {
        try #require(FileManager.default.isExecutableFile(atPath: CLITests.binary))
        let controller = try await ControllerProcess.start()
        do {
            try await body(controller)
        } catch {
            await controller.stop()
            controller.remove()
            throw error
        }
        await controller.stop()
        controller.remove()
    }

    private func jsonObject(_ result: CurlResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.body) as? [String: Any])
    }

    /// The registry lines of a watch stream. Every connection starts with the trust bundle
    /// (the mesh CA roots), checked here and left out.
    private func lines(_ text: String) throws -> [[String: Any]] {
        let all = try text.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(all.first?["type"] as? String == "trust-bundle")
        #expect((all.first?["trustBundle"] as? String)?.hasPrefix("-----BEGIN CERTIFICATE-----") == true)
        return Array(all.dropFirst())
    }

    @Test func changesNeedTheTokenAndBadResourcesAreRefusedWithFieldPaths() async throws {
        try await withController { controller in
            let unauthorized = try await controller.call("PUT", "/v1/services/orders", body: "{}", authorized: false)
            #expect(unauthorized.status == 401)
            #expect(try await controller.call("GET", "/v1/services/orders").status == 404)

            let bad = try await controller.call(
                "PUT",
                "/v1/instances/orders-1",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 70000, "wieght": 2}"#
            )
            #expect(bad.status == 400)
            let errors = try #require(try jsonObject(bad)["errors"] as? [[String: String]])
            #expect(Set(errors.compactMap { $0["field"] }) == ["port", "wieght"])
            #expect(errors.first { $0["field"] == "port" }?["reason"] == "must be between 1 and 65535, found 70000")

            let good = try await controller.call(
                "PUT",
                "/v1/instances/orders-1",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8080, "zone": "eu-1a"}"#
            )
            #expect(good.status == 200)
            // One commit creates the service and registers the instance: one revision (the
            // first stored the CA the controller created when it first started).
            #expect(good.header("x-meshwork-revision") == "2")
            let listed = try await controller.call("GET", "/v1/instances?service=orders")
            let instances = try #require(try JSONSerialization.jsonObject(with: listed.body) as? [[String: Any]])
            #expect(instances.map { $0["id"] as? String } == ["orders-1"])
            // The service was created with defaults when its first instance registered.
            #expect(try await controller.call("GET", "/v1/services/orders").status == 200)
            #expect(try await controller.call("DELETE", "/v1/services/orders").status == 200)
            #expect(try await controller.call("GET", "/v1/instances/orders-1").status == 404)
            #expect(try await controller.call("DELETE", "/v1/instances/orders-1").status == 404)
        }
    }

    /// A duration too long for 64-bit nanoseconds crashed the controller with one request;
    /// now it is a 400 naming the field, and the controller goes on serving.
    @Test func durationsTooLongForAnyClockAreRefusedWithTheFieldAndTheControllerLivesOn() async throws {
        try await withController { controller in
            for ttl in ["1e30s", "87601h"] {
                let refused = try await controller.call(
                    "POST",
                    "/v1/tokens",
                    body: #"{"service": "orders", "ttl": "\#(ttl)"}"#
                )
                #expect(refused.status == 400, "\(ttl): \(refused.text)")
                let errors = try #require(try jsonObject(refused)["errors"] as? [[String: String]])
                #expect(errors.first?["field"] == "ttl", "\(refused.text)")
                #expect(errors.first?["reason"]?.contains("at most 87600h") == true, "\(refused.text)")
            }
            #expect(try await controller.call("POST", "/v1/tokens", body: #"{"service": "orders"}"#).status == 200)
            #expect(try await controller.call("GET", "/v1/services").status == 200)
        }
    }

    /// A body that is not UTF-8 was decoded with U+FFFD in place of the bad bytes and
    /// stored so; now it is a 400 saying where the bytes are, and nothing is stored.
    @Test func aBodyThatIsNotUTF8IsRefusedAndNothingStored() async throws {
        try await withController { controller in
            let file = controller.dataDirectory + "-latin1.json"
            defer { try? FileManager.default.removeItem(atPath: file) }
            // "caf\xe9" in Latin-1, a lone continuation byte, an overlong "/" (0xc0 0xaf).
            for bad: [UInt8] in [[0x63, 0x61, 0x66, 0xE9], [0x80], [0xC0, 0xAF]] {
                var body = Array("{\n  \"name\": \"orders\",\n  \"ports\": [{\"name\": \"ht".utf8)
                body += bad + Array("\", \"protocol\": \"tcp\"}]\n}\n".utf8)
                try Data(body).write(to: URL(fileURLWithPath: file))
                let refused = try await Curl.run([
                    "-X", "PUT", "--cacert", controller.caFile, "-H", "Authorization: Bearer \(controller.token)",
                    "-H", "content-type: application/json", "--data-binary", "@" + file,
                    controller.url + "/v1/services/orders",
                ])
                #expect(refused.status == 400, "\(bad): \(refused.text)")
                let errors = try #require(try jsonObject(refused)["errors"] as? [[String: String]])
                #expect(errors.first?["reason"]?.contains("not valid UTF-8") == true, "\(refused.text)")
                #expect(errors.first?["reason"]?.contains("line 3") == true, "\(refused.text)")
            }
            #expect(try await controller.call("GET", "/v1/services/orders").status == 404)
        }
    }

    @Test func watchStartsWithASnapshotAndResumesWithExactlyWhatWasMissed() async throws {
        try await withController { controller in
            _ = try await controller.call("PUT", "/v1/services/orders", body: "{}")
            _ = try await controller.call("PUT", "/v1/services/web", body: "{}")
            let watchURL = controller.url + "/v1/watch?services=orders"
            async let watched = Curl.run(["-N", "--max-time", "2", watchURL])
            try await Task.sleep(for: .milliseconds(500))
            for n in 1...3 {
                _ = try await controller.call(
                    "PUT",
                    "/v1/instances/orders-\(n)",
                    body: #"{"service": "orders", "address": "127.0.0.1", "port": \#(8000 + n)}"#
                )
            }
            // Not watched: another service's instance.
            _ = try await controller.call(
                "PUT",
                "/v1/instances/web-1",
                body: #"{"service": "web", "address": "127.0.0.1", "port": 9000}"#
            )
            _ = try await controller.call("DELETE", "/v1/instances/orders-2")
            let stream = try lines(try await watched.text)
            #expect(stream.first?["type"] as? String == "snapshot")
            #expect((stream.first?["services"] as? [[String: Any]])?.map { $0["name"] as? String } == ["orders"])
            let events = stream.dropFirst().filter { $0["type"] as? String == "event" }
            #expect(
                events.map { $0["kind"] as? String } == [
                    "instance-put", "instance-put", "instance-put", "instance-deleted",
                ]
            )
            let revisions = events.compactMap { $0["revision"] as? Int }
            #expect(revisions == revisions.sorted() && Set(revisions).count == revisions.count)

            // A watcher that saw the second event reconnects: it gets the rest, no snapshot.
            let resumed = try lines(
                try await Curl.run(
                    ["-N", "--max-time", "1", controller.url + "/v1/watch?services=orders&revision=\(revisions[1])"]
                ).text
            )
            #expect(resumed.map { $0["type"] as? String } == ["event", "event"])
            #expect(resumed.compactMap { $0["revision"] as? Int } == Array(revisions[2...]))
        }
    }

    /// A service with more instances than one store commit holds (etcd's 128 operations,
    /// which the embedded store keeps to as well) is deleted whole: instances first, then
    /// the service.
    @Test func aServiceWithMoreInstancesThanOneCommitHoldsIsDeletedWhole() async throws {
        try await withController { controller in
            let count = 140
            let url = controller.url + "/v1/instances/orders-"
            let registered = try await Command.run(
                ["curl", "-s", "--cacert", controller.caFile, "-H", "Authorization: Bearer \(controller.token)"]
                    + (1...count).flatMap { n in
                        [
                            "-X", "PUT", "-H", "content-type: application/json", "-o", "/dev/null", "-w",
                            "%{http_code}\n",
                            "--data-binary", #"{"service": "orders", "address": "127.0.0.1", "port": \#(8000 + n)}"#,
                            url + String(n), "--next", "--cacert", controller.caFile,
                            "-H", "Authorization: Bearer \(controller.token)",
                        ]
                    }.dropLast(5)
            )
            #expect(
                registered.output.split(separator: "\n") == Array(repeating: "200", count: count),
                "\(registered.output.suffix(500))"
            )
            let deleted = try await controller.call("DELETE", "/v1/services/orders")
            #expect(deleted.status == 200, "\(deleted.text)")
            let listed = try await controller.call("GET", "/v1/instances?service=orders")
            #expect(
                (try JSONSerialization.jsonObject(with: listed.body) as? [Any])?.isEmpty == true,
                "\(listed.text.prefix(300))"
            )
            #expect(try await controller.call("GET", "/v1/services/orders").status == 404)
        }
    }

    @Test func anInstanceWithoutHeartbeatsLeavesAfterItsTTL() async throws {
        try await withController { controller in
            _ = try await controller.call(
                "PUT",
                "/v1/instances/orders-1",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8001, "ttlSeconds": 1}"#
            )
            _ = try await controller.call(
                "PUT",
                "/v1/instances/orders-2",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8002, "ttlSeconds": 3}"#
            )
            // orders-2 keeps heartbeating (and reports itself unhealthy); orders-1 does not.
            // (orders-2's TTL leaves room for a slow curl on a loaded machine.)
            for _ in 0..<5 {
                let beat = try await controller.call(
                    "POST",
                    "/v1/instances/orders-2/heartbeat",
                    body: #"{"health": "unhealthy"}"#
                )
                #expect(beat.status == 200)
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(try await controller.call("GET", "/v1/instances/orders-1").status == 404)
            let survivor = try jsonObject(try await controller.call("GET", "/v1/instances/orders-2"))
            #expect(survivor["health"] as? String == "unhealthy")
            #expect(controller.log.contains("lease expired"))
            // A heartbeat for an instance the controller no longer knows: 404, register again.
            #expect(try await controller.call("POST", "/v1/instances/orders-1/heartbeat").status == 404)
        }
    }

    @Test func aKilledControllerRestartsWithEverythingAcknowledged() async throws {
        try await withController { controller in
            _ = try await controller.call(
                "PUT",
                "/v1/services/orders",
                body: #"{"policy": {"retries": {"attempts": 1}, "outlierDetection": "off"}}"#
            )
            let put = try await controller.call(
                "PUT",
                "/v1/instances/orders-1",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8001, "ttlSeconds": 0}"#
            )
            let revision = try #require(put.header("x-meshwork-revision"))
            await controller.stop(kill: true)
            try await controller.restart()
            let service = try jsonObject(try await controller.call("GET", "/v1/services/orders"))
            let policy = try #require(service["policy"] as? [String: Any])
            #expect((policy["retries"] as? [String: Any])?["attempts"] as? Int == 1)
            #expect(policy["outlierDetection"] as? String == "off")
            #expect(try await controller.call("GET", "/v1/instances/orders-1").status == 200)
            // The revision carries on; a watcher from before the restart gets a snapshot.
            let next = try await controller.call(
                "PUT",
                "/v1/instances/orders-2",
                body: #"{"service": "orders", "address": "127.0.0.1", "port": 8002}"#
            )
            #expect(Int(next.header("x-meshwork-revision") ?? "") == Int(revision)! + 1)
            let resumed = try lines(
                try await Curl.run(["-N", "--max-time", "1", controller.url + "/v1/watch?revision=1"]).text
            )
            #expect(resumed.first?["type"] as? String == "snapshot")
        }
    }

    @Test func servesItsOpenAPIDocumentAsPublishedInDocs() async throws {
        try await withController { controller in
            let served = try await controller.call("GET", "/v1/openapi.json")
            #expect(served.status == 200)
            let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/api.openapi.json")
            let published = try Data(contentsOf: docs)
            let a = try JSONSerialization.jsonObject(with: served.body) as? NSDictionary
            let b = try JSONSerialization.jsonObject(with: published) as? NSDictionary
            #expect(a != nil && a == b, "docs/api.openapi.json differs from what the controller serves")
        }
    }
}

import Foundation
import Logging

@testable import MeshworkController

/// A fresh store for one test: a SQLite file in a temporary directory, or a 3-member etcd
/// cluster started with `scripts/etcd-cluster` (about a second) and stopped afterwards,
/// also when the test fails.
enum StoreHarness {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func with<Store>(
        _ backend: ControllerStoreTests.Backend,
        _ body: (any ControllerStore, String) async throws -> Store
    ) async throws -> Store {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshwork-store-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        switch backend {
        case .sqlite:
            let store = try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
            do {
                let result = try await body(store, "")
                await store.close()
                return result
            } catch {
                await store.close()
                throw error
            }
        case .etcd:
            let endpoints = try await EtcdCluster.start(directory.path)
            let client = try EtcdClient(
                options: .init(endpoints: endpoints.split(separator: ",").map(String.init)),
                logger: Logger(label: "test")
            )
            let store = EtcdStore(client: client, prefix: "/test-\(UUID())")
            do {
                let result = try await body(store, endpoints)
                await store.close()
                try await EtcdCluster.stop(directory.path)
                return result
            } catch {
                await store.close()
                try? await EtcdCluster.stop(directory.path)
                throw error
            }
        }
    }
}

/// `scripts/etcd-cluster`, driven from tests.
enum EtcdCluster {
    static func start(_ directory: String, members: Int = 3) async throws -> String {
        let (status, output) = try await run(["start", directory, String(members)])
        guard status == 0, let endpoints = output.split(separator: "\n").last.map(String.init) else {
            throw HarnessError("scripts/etcd-cluster start failed (\(status)): \(output)")
        }
        return endpoints
    }

    static func stop(_ directory: String) async throws {
        _ = try await run(["stop", directory])
    }

    /// Its output goes to a file, not a pipe: the etcd members it leaves running would
    /// hold a pipe's write end open, and a read to its end would never return.
    static func run(_ arguments: [String]) async throws -> (Int32, String) {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("etcd-cluster-\(UUID()).out")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: output) }
        let handle = try FileHandle(forWritingTo: output)
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = StoreHarness.root.appendingPathComponent("scripts/etcd-cluster")
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { process in continuation.resume(returning: process.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        // Frees what Foundation keeps for an ended process (see Command.release in the
        // data plane tests).
        if process.processIdentifier > 0, !process.isRunning { process.waitUntilExit() }
        return (status, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

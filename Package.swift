// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "meshwork",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "meshwork", targets: ["meshwork"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.19.4"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.3.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context.git", from: "1.0.0"),
    ],
    targets: [
        // Pure traffic algorithms (balancers, subsetting, outlier detection, budgets and
        // limiters): no NIO, injected clock and randomness.
        .target(
            name: "MeshworkTraffic",
            swiftSettings: swiftSettings
        ),
        // Pure value types and the config schema (which holds the traffic policies): no NIO.
        .target(
            name: "MeshworkModel",
            dependencies: ["MeshworkTraffic", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        // Workload identity: the mesh CA, X.509-SVIDs, CSRs and renewal proofs.
        .target(
            name: "MeshworkIdentity",
            dependencies: [
                "MeshworkModel",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        // The DNS wire format and the mesh's names answered from a registry snapshot: no NIO.
        .target(
            name: "MeshworkDNS",
            dependencies: ["MeshworkModel"],
            swiftSettings: swiftSettings
        ),
        // The data plane: listeners, proxying, pools, TLS, admin.
        .target(
            name: "MeshworkDataPlane",
            dependencies: [
                "MeshworkModel",
                "MeshworkTraffic",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
                // Reading a peer's leaf certificate (basicConstraints, key usage).
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        // The controller: registry, store, leases, watch streams and the HTTP API.
        .target(
            name: "MeshworkController",
            dependencies: [
                "MeshworkModel",
                "MeshworkIdentity",
                "MeshworkDNS",
                "MeshworkTraffic",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The sidecar's link to the controller: watch, cache, registration, health checks.
        .target(
            name: "MeshworkDiscovery",
            dependencies: [
                "MeshworkModel",
                "MeshworkIdentity",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "MeshworkDataPlane",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The project's own demo app: a fast upstream for tests, benchmarks and the demo.
        .target(
            name: "MeshworkDemo",
            dependencies: [
                "MeshworkDataPlane",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "meshwork",
            dependencies: [
                "MeshworkModel",
                "MeshworkDataPlane",
                "MeshworkController",
                "MeshworkDNS",
                "MeshworkDiscovery",
                "MeshworkDemo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings,
            // Release: lld with packed relative relocations (DT_RELR, glibc 2.36+). A PIE's
            // RELATIVE relocations (3.5 MiB of them here) are read whole at every start and
            // stay resident; packed they take 30 KiB. See scripts/build-release.
            linkerSettings: [
                .unsafeFlags(
                    [
                        "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker",
                        "--no-export-dynamic",
                    ],
                    .when(configuration: .release)
                )
            ]
        ),
        // The traffic simulator benchmark: `swift run -c release meshwork-sim`.
        .executableTarget(
            name: "meshwork-sim",
            dependencies: ["MeshworkTraffic"],
            path: "bench/simulator",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeshworkModelTests",
            dependencies: ["MeshworkModel", "MeshworkTraffic"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeshworkIdentityTests",
            dependencies: [
                "MeshworkIdentity",
                "MeshworkModel",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeshworkDNSTests",
            dependencies: ["MeshworkDNS", "MeshworkModel", "MeshworkTraffic"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeshworkTrafficTests",
            dependencies: ["MeshworkTraffic"],
            swiftSettings: swiftSettings
        ),
        // The controller's store contract, against SQLite and a real etcd cluster.
        .testTarget(
            name: "MeshworkControllerTests",
            dependencies: [
                "MeshworkController",
                "MeshworkModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                "MeshworkIdentity",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MeshworkDataPlaneTests",
            dependencies: [
                "MeshworkDataPlane",
                "MeshworkModel",
                "MeshworkTraffic",
                "MeshworkDemo",
                "MeshworkDiscovery",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
    ]
)

// libFuzzer targets (scripts/fuzz): only when MESHWORK_FUZZ is set, so the normal build
// and the tests never compile them. Built with -sanitize=fuzzer; @testable reaches the
// internal parsers (a debug build enables testability).
if Context.environment["MESHWORK_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "MeshworkFuzz",
            dependencies: [
                "MeshworkDataPlane",
                "MeshworkModel",
                "MeshworkDNS",
                "MeshworkTraffic",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            path: "Fuzz/MeshworkFuzz",
            swiftSettings: swiftSettings
        )
    )
}

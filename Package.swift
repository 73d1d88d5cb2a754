// swift-tools-version:6.0
//
// definite-agent: a durable local forwarding agent for Definite's Stream API.
//
// Targets, in the order a record meets them:
//   definite-agent (executable)  → thin entry point, hands argv to the CLI
//   DefiniteAgent (library)      → configuration, intake, spool, delivery, operations
//   CSQLite / CCurl / CZlib /
//   CLibDeflate                  → the C libraries, reached through small shims
//   CSpoolVFS                    → SQLite's default VFS with a spool's writes gathered until each sync
import PackageDescription

let package = Package(
    name: "definite-agent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "definite-agent", targets: ["definite-agent"]),
        .library(name: "DefiniteAgent", targets: ["DefiniteAgent"]),
        .executable(name: "definite-agent-bench", targets: ["definite-agent-bench"]),
        .executable(name: "definite-agent-fuzz", targets: ["definite-agent-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // MARK: C libraries
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        .target(
            name: "CCurl",
            linkerSettings: [.linkedLibrary("curl")]
        ),
        .target(
            name: "CZlib",
            linkerSettings: [.linkedLibrary("z")]
        ),
        .target(
            name: "CLibDeflate",
            linkerSettings: [.linkedLibrary("deflate")]
        ),
        .target(name: "CAgentSupport"),
        .target(
            name: "CSpoolVFS",
            linkerSettings: [.linkedLibrary("sqlite3")]
        ),

        // MARK: The agent
        .target(
            name: "DefiniteAgent",
            dependencies: [
                "CSQLite",
                "CSpoolVFS",
                "CCurl",
                "CZlib",
                "CLibDeflate",
                "CAgentSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            // Members of extensions are visible only from the modules a file imports: a dependency that
            // imports all of Foundation (TOMLKit does) would otherwise lend its members (`String(format:)`)
            // to files that import only FoundationEssentials, and the daemon would link Foundation's ICU.
            swiftSettings: [.enableUpcomingFeature("MemberImportVisibility")]
        ),
        .executableTarget(
            name: "definite-agent",
            dependencies: ["DefiniteAgent"],
            // The release daemon carries its Swift runtime: it runs without the toolchain installed (no
            // RUNPATH into it) and keeps ~4 MiB fewer library pages resident. It links FoundationEssentials,
            // not Foundation (whose ICU data alone is ~30 MB; Tests/Packaging/test_footprint.py checks),
            // and exports no symbols: `-static-stdlib` alone exports every Swift symbol of every module,
            // 1.6 MB of dynamic symbol table that nothing looks up (the unstripped build in .build keeps
            // its full symbol table for debugging).
            swiftSettings: [.unsafeFlags(["-static-stdlib"], .when(platforms: [.linux], configuration: .release))],
            linkerSettings: [
                .unsafeFlags(["-static-stdlib", "-Xlinker", "--no-export-dynamic"], .when(platforms: [.linux], configuration: .release)),
            ]
        ),

        // MARK: Benchmarks
        .executableTarget(
            name: "definite-agent-bench",
            dependencies: [
                "CSQLite",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Benchmarks/definite-agent-bench"
        ),

        // MARK: Tests
        // The intake fuzzer: libFuzzer with `Tests/Fuzz/run`, a corpus replayer otherwise.
        .target(name: "CFuzzerDriver", path: "Tests/Fuzz/CFuzzerDriver"),
        .executableTarget(
            name: "definite-agent-fuzz",
            dependencies: ["DefiniteAgent", "CFuzzerDriver"],
            path: "Tests/Fuzz/IntakeFuzzer"
        ),
        .testTarget(
            name: "DefiniteAgentTests",
            dependencies: [
                "DefiniteAgent",
                "CSpoolVFS",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

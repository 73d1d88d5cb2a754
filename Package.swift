// swift-tools-version:6.0
//
// definite-agent: a durable local forwarding agent for Definite's Stream API.
//
// Targets, each depending only on those above it in this list:
//   Core        → the shared vocabulary: configuration, targets and table names, limits, JSON, sizes and
//                 durations, gzip, metrics names, the life-cycle protocol every part implements
//   Spool       → the SQLite write-ahead queue (knows nothing of HTTP or sockets)
//   Intake      → listeners and protocols that put records into the spool
//   Delivery    → reads the spool per table and sends it to the Stream API
//   Daemon      → wires the layers into one supervised process (systemd, metrics, health)
//   Operations  → the command line: run, send, status, queue, dlq, config
//   definite-agent (executable) → thin entry point, hands argv to the CLI
//   CSQLite / CCurl / CZlib /
//   CLibDeflate                  → the C libraries, reached through small shims
//   CSpoolVFS                    → SQLite's default VFS with a spool's writes gathered until each sync
import PackageDescription

let package = Package(
    name: "definite-agent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "definite-agent", targets: ["definite-agent"]),
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
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
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

        // MARK: The agent, one target per layer; each depends only on the layers below it.
        // The compiler keeps the direction: Spool cannot name an HTTP status, Intake and Delivery cannot
        // reach into each other, and only Daemon and Operations see every layer.
        .target(
            name: "Core",
            dependencies: [
                "CAgentSupport",
                "CZlib",
                "CLibDeflate",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .target(
            name: "Spool",
            dependencies: [
                "Core",
                "CSQLite",
                "CSpoolVFS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .target(
            name: "Intake",
            dependencies: [
                "Core",
                "Spool",
                "CAgentSupport",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .target(
            name: "Delivery",
            dependencies: [
                "Core",
                "Spool",
                "CCurl",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .target(
            name: "Daemon",
            dependencies: [
                "Core",
                "Spool",
                "Intake",
                "Delivery",
                "CAgentSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .target(
            name: "Operations",
            dependencies: [
                "Core",
                "Spool",
                "Intake",
                "Delivery",
                "Daemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: agentSwiftSettings
        ),
        .executableTarget(
            name: "definite-agent",
            dependencies: ["Operations"],
            // The release daemon carries its Swift runtime: it runs without the toolchain installed (no
            // RUNPATH into it) and keeps ~4 MiB fewer library pages resident. It links FoundationEssentials,
            // not Foundation (whose ICU data alone is ~30 MB; Tests/Packaging/test_footprint.py checks),
            // and exports no symbols: `-static-stdlib` alone exports every Swift symbol of every module,
            // 1.6 MB of dynamic symbol table that nothing looks up (the unstripped build in .build keeps
            // its full symbol table for debugging).
            swiftSettings: [.unsafeFlags(["-static-stdlib"], .when(platforms: [.linux], configuration: .release))],
            linkerSettings: [
                .unsafeFlags(["-static-stdlib", "-Xlinker", "--no-export-dynamic"], .when(platforms: [.linux], configuration: .release))
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
            dependencies: ["Core", "Spool", "Intake", "CFuzzerDriver"],
            path: "Tests/Fuzz/IntakeFuzzer"
        ),
        .testTarget(
            name: "DefiniteAgentTests",
            dependencies: [
                "Core",
                "Spool",
                "Intake",
                "Delivery",
                "Daemon",
                "Operations",
                "CSpoolVFS",
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

/// Every agent target: members of extensions are visible only from the modules a file imports. A
/// dependency that imports all of Foundation (TOMLKit does) would otherwise lend its members
/// (`String(format:)`) to files that import only FoundationEssentials, and the daemon would link
/// Foundation's ICU.
var agentSwiftSettings: [SwiftSetting] { [.enableUpcomingFeature("MemberImportVisibility")] }

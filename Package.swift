// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "archipelago",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "ArchipStore", targets: ["ArchipStore"]),
        .executable(name: "archip", targets: ["archip"]),
        .executable(name: "archip-extstorage", targets: ["archip-extstorage"]),
        .executable(name: "snf-manage", targets: ["snf-manage"]),
        .executable(name: "cyclades-api", targets: ["cyclades-api"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // The Cyclades registration layer's database (SQLite, migrations, WAL).
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // cyclades-api: the Cinder-compatible volume API and compute extensions (HTTP).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // OpenSSL's libcrypto: SHA-256 for content addresses and map checksums.
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // libcurl: HTTP(S) sources of the filler (ranged GETs, retries, TLS) and
        // Ganeti's RAPI. Headers only: the shim loads libcurl.so.4 on first use
        // (no pkg-config, whose --libs would link it into every program).
        .systemLibrary(
            name: "CCurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // libfuse3 (kernel block device path: FUSE file + loop device).
        .systemLibrary(
            name: "CFuse3",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),
        // The FUSE file system and loop ioctls, in C: libfuse's API is macros and varargs.
        .target(
            name: "CArchipFuse",
            dependencies: ["CFuse3"]
        ),
        // Linux calls Swift's Glibc module hides (syncfs, renameat2).
        .target(name: "CArchipSys"),
        .target(
            name: "ArchipStore",
            dependencies: ["CCrypto", "CArchipSys"],
            swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
        ),
        // librados (Ceph), for the rados backend: headers only, the shim loads
        // librados.so.2 when a rados:// store is opened. Debian's librados-dev has no .pc file.
        .systemLibrary(
            name: "CRados",
            path: "Sources/CRados",
            providers: [.apt(["librados-dev"])]
        ),
        // The rados backend (RadosObjectStore) and StoreOpener, which opens a store
        // from a location of either backend; ArchipStore itself does not link librados.
        .target(
            name: "ArchipRados",
            dependencies: ["ArchipStore", "CRados"]
        ),
        // The data filler: sources (file, HTTP(S), Pithos, snapshot) -> verified, parallel copy.
        .target(
            name: "ArchipFill",
            dependencies: ["ArchipStore", "CCurl"]
        ),
        // The node data path: NBD (QEMU), FUSE + loop (kernel block device).
        .target(
            name: "ArchipServe",
            dependencies: ["ArchipStore", "CArchipFuse"]
        ),
        // Ganeti's ExtStorage contract: environment -> store and node-daemon operations.
        .target(
            name: "ExtStorage",
            dependencies: ["ArchipStore", "ArchipFill", "ArchipServe"]
        ),
        // The provider binary every script of extstorage/archipelago runs.
        .executableTarget(
            name: "archip-extstorage",
            dependencies: ["ExtStorage", "ArchipStore", "ArchipRados"]
        ),
        // The Cyclades registration layer: volumes, servers, quotas, Ganeti through RAPI.
        .target(
            name: "Cyclades",
            dependencies: ["ArchipStore", "ArchipServe", "CCurl", "CCrypto", .product(name: "GRDB", package: "GRDB.swift")]
        ),
        // The operators' commands of the registration layer. Neither front end gets GRDB:
        // every read and change goes through Registry (FrontEndDoorTests checks).
        .executableTarget(
            name: "snf-manage",
            dependencies: ["Cyclades", "ArchipStore", "ArchipRados", "ArchipServe", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The Cinder-compatible volume API and compute extensions on the registration layer.
        .target(
            name: "CycladesAPI",
            dependencies: ["Cyclades", "ArchipStore", "ArchipRados", "ArchipServe", .product(name: "Hummingbird", package: "hummingbird")]
        ),
        .executableTarget(
            name: "cyclades-api",
            dependencies: ["CycladesAPI", "Cyclades", "ArchipStore", .product(name: "Hummingbird", package: "hummingbird"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "archip",
            dependencies: [
                "ArchipStore",
                "ArchipRados",
                "ArchipFill",
                "ArchipServe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Test-only workload driver for the crash test (killed with SIGKILL on purpose).
        .executableTarget(
            name: "archip-torture",
            dependencies: ["ArchipStore", "ArchipRados"]
        ),
        // make bench: ratios against baselines measured in the same run.
        .executableTarget(
            name: "archip-bench",
            dependencies: ["ArchipStore"]
        ),
        // Helpers shared by the test targets (running commands, prerequisites).
        .target(name: "ArchipTestSupport"),
        // The backends the store's and the filler's suites run on (dir; rados with ARCHIP_TEST_RADOS).
        .target(name: "ArchipStoreTesting", dependencies: ["ArchipStore", "ArchipRados"]),
        .testTarget(
            name: "CycladesTests",
            dependencies: ["Cyclades", "ArchipStore"],
            exclude: ["Recorded"]   // RAPI answers, read from the source tree
        ),
        // The provider's rules over a store in memory and a fake node daemon.
        .testTarget(
            name: "ExtStorageTests",
            dependencies: ["ExtStorage", "ArchipStore", "ArchipServe"]
        ),
        .testTarget(
            name: "CycladesAPITests",
            dependencies: ["CycladesAPI", "Cyclades", "ArchipStore", "ArchipStoreTesting", .product(name: "GRDB", package: "GRDB.swift"),
                           .product(name: "Hummingbird", package: "hummingbird"), .product(name: "HummingbirdTesting", package: "hummingbird")]
        ),
        .testTarget(
            name: "ArchipStoreTests",
            dependencies: ["ArchipStore", "ArchipRados", "ArchipStoreTesting", "ArchipTestSupport"]
        ),
        .testTarget(
            name: "ArchipFillTests",
            dependencies: ["ArchipFill", "ArchipStore", "ArchipTestSupport", "ArchipStoreTesting"]
        ),
        .testTarget(
            name: "ArchipServeTests",
            dependencies: ["ArchipServe", "ArchipStore", "ArchipTestSupport"]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["ArchipStore", "ArchipTestSupport", "archip", "archip-torture", "archip-extstorage"]
        ),
    ]
)

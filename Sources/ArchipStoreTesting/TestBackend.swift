import ArchipRados
import ArchipStore
import Foundation
import Testing

/// The object-store backends the store's and the filler's suites run on, so
/// the same test code checks each of them:
///
///     @Test(arguments: TestBackend.persistent)
///     func something(_ backend: TestBackend) throws {
///         let t = try backend.store("something")
///         defer { t.remove() }
///         ...
///     }
///
/// `dir` always runs. `rados` runs when `ARCHIP_TEST_RADOS` names a pool
/// (`rados://POOL?conf=FILE&id=NAME`; `make rados-test` sets it after
/// `tests/e2e/ceph/ceph-up.sh up`); without it each rados case is cancelled
/// (reported as skipped) with that reason. Each test store gets a RADOS
/// namespace (or a folder) of its own, so runs never collide, and `remove()`
/// deletes every object it made.
public enum TestBackend: String, Sendable, CaseIterable, CustomStringConvertible {
    case memory, dir, rados

    /// The backends that keep objects outside the process (what the store ships with).
    public static let persistent: [TestBackend] = [.dir, .rados]

    public var description: String { rawValue }

    /// `ARCHIP_TEST_RADOS`, when set.
    public static var radosBase: String? {
        guard let u = ProcessInfo.processInfo.environment["ARCHIP_TEST_RADOS"], !u.isEmpty else { return nil }
        return u
    }

    /// Cancelled test cases print nothing on the console: say it once per run.
    private static let saidWhy: Void = {
        if let why = TestBackend.rados.unavailableReason {
            FileHandle.standardError.write(Data("store and filler suites: their rados cases are skipped: \(why)\n".utf8))
        }
    }()

    /// Why this backend cannot run here; nil when it can.
    public var unavailableReason: String? {
        self == .rados && TestBackend.radosBase == nil
            ? "rados backend: ARCHIP_TEST_RADOS is not set (make rados-test sets it after ceph-up.sh)" : nil
    }

    /// A fresh, empty store for one test, or the test case is cancelled
    /// (skipped, with the reason printed) when the backend is not available.
    public func store(_ tag: String, node: String = "n1") throws -> TestStore {
        if let why = unavailableReason {
            _ = TestBackend.saidWhy
            try Test.cancel(Comment(rawValue: why))
        }
        let unique = "\(tag)-\(UUID().uuidString.prefix(8).lowercased())"
        switch self {
        case .memory:
            return try TestStore(backend: self, location: "memory:\(unique)", shared: MemoryObjectStore(), node: node)
        case .dir:
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-test-\(unique)").path
            return try TestStore(backend: self, location: dir, shared: nil, node: node)
        case .rados:
            let base = TestBackend.radosBase!
            let url = base + (base.contains("?") ? "&" : "?") + "ns=test-\(unique)"
            return try TestStore(backend: self, location: url, shared: nil, node: node)
        }
    }
}

/// One test's store: the `VolumeStore` under test plus what a test needs
/// around it, whatever the backend: more handles on the same objects (other
/// "nodes"), direct access to the objects (to damage or count them), removal.
public final class TestStore: @unchecked Sendable {
    public let backend: TestBackend
    /// The folder (dir) or the rados:// URL with the test's namespace.
    public let location: String
    public let store: VolumeStore
    private let shared: MemoryObjectStore?

    init(backend: TestBackend, location: String, shared: MemoryObjectStore?, node: String) throws {
        self.backend = backend
        self.location = location
        self.shared = shared
        if let shared {
            store = try VolumeStore(objects: shared, node: node)
        } else {
            store = try StoreOpener.open(location, node: node)
        }
    }

    /// The store's objects, through the store's own connection.
    public var objects: any ObjectStore { store.objects }

    /// The same store opened again, as another node (process) opens it: its own
    /// connection (rados), its own handles (dir).
    public func node(_ name: String) throws -> VolumeStore {
        if let shared { return try VolumeStore(objects: shared, node: name) }
        return try StoreOpener.open(location, node: name, mustExist: true)
    }

    /// The objects through a connection of their own, for changing them behind
    /// the store's back (damage, removal) as another process would.
    public func outsideObjects() throws -> any ObjectStore {
        try node("tamper").objects
    }

    /// How many objects there are under `prefix` (a folder, ending in `/`).
    public func count(prefix: String) throws -> Int {
        var n = 0
        try outsideObjects().enumerate(prefix: prefix) { _ in n += 1; return true }
        return n
    }

    /// Deletes everything the test made (its folder, or every object of its namespace).
    public func remove() {
        switch backend {
        case .memory: break
        case .dir: try? FileManager.default.removeItem(atPath: location)
        case .rados:
            do {
                try RadosObjectStore(try RadosLocation.parse(location)).removeAll(prefix: "")
            } catch {
                FileHandle.standardError.write(Data("TestStore: could not remove the objects of \(location): \(error)\n".utf8))
            }
        }
    }
}

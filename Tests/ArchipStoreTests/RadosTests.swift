import ArchipRados
import Foundation
import Testing
@testable import ArchipStore

/// The cluster these tests use: `ARCHIP_TEST_RADOS=rados://POOL?conf=FILE&id=NAME`,
/// set by `make rados-test` after `tests/e2e/ceph/ceph-up.sh up`. Without it the
/// rados tests are skipped (and the model test runs on memory and dir only).
enum RadosTestPool {
    static var base: String? {
        guard let u = ProcessInfo.processInfo.environment["ARCHIP_TEST_RADOS"], !u.isEmpty else { return nil }
        return u
    }

    static var available: Bool { base != nil }

    /// A fresh RADOS namespace, so each test starts from an empty store.
    static func url(_ tag: String = "t") -> String? {
        guard let base else { return nil }
        return base + (base.contains("?") ? "&" : "?") + "ns=\(tag)-\(UUID().uuidString.prefix(8).lowercased())"
    }

    static func objects(_ url: String) throws -> RadosObjectStore {
        try RadosObjectStore(try RadosLocation.parse(url))
    }

    /// Removes every object of the test's namespace, through a connection of
    /// its own (the test's may have been fenced off).
    static func removeAll(_ url: String) {
        do { try objects(url).removeAll(prefix: "") } catch { Issue.record("cleaning \(url): \(error)") }
    }
}

@Suite(.enabled(if: RadosTestPool.available, "ARCHIP_TEST_RADOS is not set (make rados-test sets it)"))
struct RadosBackend {
    @Test func locationRoundTrips() throws {
        let l = try RadosLocation.parse("rados://p1?conf=/etc/ceph/a%26b.conf&id=archip&ns=x")
        #expect(l.pool == "p1" && l.conf == "/etc/ceph/a&b.conf" && l.id == "archip" && l.namespace == "x")
        #expect(try RadosLocation.parse(l.description) == l)
        #expect(throws: StoreError.self) { try RadosLocation.parse("rados://") }
        #expect(throws: StoreError.self) { try RadosLocation.parse("rados://p?user=x") }
        #expect(throws: StoreError.self) { try RadosLocation.parse("rados://p?id=client.admin") }
        let conf = ["store.backend": "rados", "store.pool": "vols", "store.id": "archip"]
        #expect(try StoreLocation.fromConfig(conf, file: "f") == "rados://vols?conf=/etc/ceph/ceph.conf&id=archip")
        #expect(throws: StoreError.self) { try StoreLocation.fromConfig(["store.backend": "rados"], file: "f") }
        #expect(throws: StoreError.self) { try StoreLocation.fromConfig(["store.backend": "s3"], file: "f") }
    }

    @Test func objectContract() throws {
        let url = RadosTestPool.url("obj")!
        defer { RadosTestPool.removeAll(url) }
        let o = try RadosTestPool.objects(url)
        let a = ObjectName("layers", "aa", "b00000001")
        try o.put(a, Array("hello".utf8), durable: false)
        // Async write, then a read: ordered after it.
        #expect(try o.readAll(a) == Array("hello".utf8))
        try "xy".utf8.map { $0 }.withUnsafeBytes { try o.write(a, at: 1, $0) }
        try o.sync([a])
        #expect(try o.readAll(a) == Array("hxylo".utf8))
        var buf = [UInt8](repeating: 0, count: 10)
        let n = try buf.withUnsafeMutableBytes { try o.read(a, at: 3, into: $0) }
        #expect(n == 2 && buf.prefix(2) == ArraySlice(Array("lo".utf8)))
        // Zero-extended put.
        try [UInt8(1)].withUnsafeBytes { try o.put(a, $0, length: 1 << 20, durable: true) }
        #expect(try o.stat(a)?.size == 1 << 20)
        #expect(try o.readAll(a).count == 1 << 20)
        // Exclusive create.
        let c = ObjectName("blocks", "ab", "cd", "ef", "abcdef")
        #expect(try o.create(c, [1, 2, 3], durable: false))
        #expect(try !o.create(c, [9], durable: false))
        #expect(try o.readAll(c) == [1, 2, 3])
        // An in-place write to a missing object fails (at the latest at sync).
        let missing = ObjectName("layers", "aa", "b00000002")
        #expect(throws: StoreError.self) {
            try [UInt8(1)].withUnsafeBytes { try o.write(missing, at: 0, $0) }
            try o.syncContents(missing)
        }
        #expect(try o.stat(missing) == nil)
        #expect(throws: StoreError.self) { try o.readAll(missing) }
        // Listing by prefix, rename, remove.
        var listed: [String] = []
        try o.enumerate(prefix: "layers/") { listed.append($0.path); return true }
        #expect(listed == ["layers/aa/b00000001"])
        try o.put(ObjectName("names", "x"), [1], durable: true)
        try o.rename(ObjectName("names", "x"), to: ObjectName("names", "y"))
        #expect(try o.stat(ObjectName("names", "x")) == nil)
        #expect(try o.readAll(ObjectName("names", "y")) == [1])
        #expect(try o.remove(a))
        #expect(try !o.remove(a))
        try o.removeAll(prefix: "")
        var left = 0
        try o.enumerate(prefix: "") { _ in left += 1; return true }
        #expect(left == 0)
    }

    /// Many block writes in flight at once, then one sync: all land.
    @Test func boundedAsyncWrites() throws {
        let url = RadosTestPool.url("async")!
        defer { RadosTestPool.removeAll(url) }
        let o = try RadosTestPool.objects(url)
        let names = (0..<200).map { ObjectName("layers", "cc", String(format: "b%08x", $0)) }
        for (i, n) in names.enumerated() {
            try o.put(n, [UInt8](repeating: UInt8(i & 0xff), count: 64 << 10), durable: false)
        }
        try o.sync(names)
        for (i, n) in names.enumerated() where i % 17 == 0 {
            #expect(try o.readAll(n) == [UInt8](repeating: UInt8(i & 0xff), count: 64 << 10))
        }
        try o.removeAll(prefix: "layers/cc/")
    }

    /// Maps, logs and records are compare-and-swapped: a writer whose view is
    /// older than the object fails instead of overwriting.
    @Test func staleWriterOfAMapFails() throws {
        let url = RadosTestPool.url("cas")!
        defer { RadosTestPool.removeAll(url) }
        let a = try RadosTestPool.objects(url), b = try RadosTestPool.objects(url)
        let map = ObjectName("layers", "dd", "map"), log = ObjectName("layers", "dd", "log")
        try a.put(map, [1], durable: true)
        #expect(try b.readAll(map) == [1])
        try b.put(map, [2], durable: true)
        do {
            try a.put(map, [3], durable: true)
            Issue.record("a stale writer replaced the map")
        } catch let e as StoreError {
            #expect(e.code == .locked)
            #expect(e.description.contains("changed by another writer"))
        }
        #expect(try b.readAll(map) == [2])
        // Reading it again does not make a's stale view current: a wrote it,
        // and its next write must build on what it wrote (a gc or info in the
        // same process reads maps of volumes it holds open).
        #expect(try a.readAll(map) == [2])
        #expect(throws: StoreError.self) { try a.put(map, [3], durable: true) }
        // Having forgotten its view (a fresh open does) and read it again, a may write.
        a.forgetCached(map)
        _ = try a.readAll(map)
        try a.put(map, [4], durable: true)
        // Appends to a log: the same.
        #expect(try a.stat(log) == nil)
        try a.put(log, [0, 0], durable: true)
        _ = try b.readAll(log)
        try [UInt8(7)].withUnsafeBytes { try b.write(log, at: 2, $0) }
        #expect(throws: StoreError.self) { try [UInt8(8)].withUnsafeBytes { try a.write(log, at: 2, $0) } }
        // A log a process saw absent is created exclusively: it cannot replace another's.
        let log2 = ObjectName("layers", "ee", "log")
        #expect(try a.stat(log2) == nil)
        try b.put(log2, [5], durable: true)
        #expect(throws: StoreError.self) { try a.put(log2, [6], durable: true) }
        #expect(try b.readAll(log2) == [5])
        try a.removeAll(prefix: "")
    }

    @Test func secondNodeIsRefusedByTheCluster() throws {
        let url = RadosTestPool.url("lock")!
        defer { RadosTestPool.removeAll(url) }
        let a = try StoreOpener.open(url, node: "node-a"), b = try StoreOpener.open(url, node: "node-b")
        try a.create(name("v"), size: .mebibytes(16))
        let va = try a.open(name("v"))
        do {
            _ = try b.open(name("v"))
            Issue.record("second node opened a held volume")
        } catch let e as StoreError {
            #expect(e.code == .locked)
            #expect(e.description.contains("node node-a"))
        }
        #expect(throws: StoreError.self) { try b.remove(name("v")) }
        #expect(throws: StoreError.self) { try b.unlock(name("v"), owner: LockOwner(node: "node-b", token: ""), force: false) }
        let data = (0..<(5 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try va.write(at: 1000, data)
        try va.flush()
        try va.close()
        #expect(try a.lockState(name("v")) == nil)
        let vb = try b.open(name("v"))
        #expect(try vb.read(at: 1000, length: data.count) == data)
        try vb.close()
        // Shared (migration): both nodes, then a third is refused.
        let sa = try a.open(name("v"), mode: .shared), sb = try b.open(name("v"), mode: .shared)
        #expect(throws: StoreError.self) { try StoreOpener.open(url, node: "node-c").open(name("v")) }
        try sa.write(at: 100, Array("migrating".utf8))
        try sa.close()
        #expect(try sb.read(at: 100, length: 9) == Array("migrating".utf8))
        try sb.close()
        #expect(try a.lockState(name("v")) == nil)
        // Same owner, two processes' worth of connections: idempotent, convertible.
        let o = LockOwner(node: "node-a", token: "t1")
        try a.lock(name("v"), owner: o, mode: .exclusive)
        try b.lock(name("v"), owner: o, mode: .exclusive)
        try b.lock(name("v"), owner: o, mode: .shared)
        #expect(try a.lockState(name("v"))?.mode == .shared)
        #expect(try a.unlock(name("v"), owner: LockOwner(node: "node-a", token: ""), force: false))
        #expect(try a.lockState(name("v")) == nil)
    }

    /// gc lists the pool a fixed number of times, however many layers there
    /// are (RADOS lists a pool only whole: one pass per layer made gc
    /// quadratic), and still removes exactly what nothing references.
    @Test func gcListsThePoolAFixedNumberOfTimes() throws {
        let url = RadosTestPool.url("gcpasses")!
        defer { RadosTestPool.removeAll(url) }
        let objects = try RadosTestPool.objects(url)
        let store = try VolumeStore(objects: objects, node: "n1")
        func block(_ i: Int, _ b: Int) -> [UInt8] { [UInt8](repeating: UInt8(i * 3 + b + 1), count: 1 << 20) }
        for i in 0..<12 {
            let v = name("v\(i)")
            try store.create(v, size: .mebibytes(4), blockSize: 1 << 20)
            try store.withVolume(v) { try $0.write(at: 0, block(i, 0) + block(i, 1)) }
            try store.snapshot(v, as: name("v\(i)-s"))
            _ = try store.hash(name("v\(i)-s"))
            try store.withVolume(v) { try $0.write(at: 2 << 20, block(i, 2)) }
        }
        // Half the names vanish as after a crash in the middle of a remove:
        // their layers are dead, their content blocks unreferenced.
        for i in 0..<6 {
            #expect(try objects.remove(ObjectName("names", "v\(i)")))
            #expect(try objects.remove(ObjectName("names", "v\(i)-s")))
        }
        var layers = Set<String>()
        try objects.enumerate(prefix: "layers/") { layers.insert(String($0.path.split(separator: "/")[1])); return true }
        #expect(layers.count == 24)

        var before = objects.listPasses
        let dry = try store.gc(apply: false, grace: 0)
        #expect(objects.listPasses - before == 2, "gc --dry-run listed the pool \(objects.listPasses - before) times for \(layers.count) layers")
        #expect(dry.deadLayers.count == 12 && dry.unreferencedContentBlocks == 12, "\(dry)")
        before = objects.listPasses
        let done = try store.gc(apply: true, grace: 0)
        #expect(objects.listPasses - before == 3, "gc --apply listed the pool \(objects.listPasses - before) times")
        #expect(done.deadLayers == dry.deadLayers && done.unreferencedContentBlocks == 12)
        let again = try store.gc(apply: false, grace: 0)
        #expect(again.deadLayers.isEmpty && again.unreferencedContentBlocks == 0 && again.orphanOwnedBlocks == 0, "\(again)")
        layers.removeAll()
        try objects.enumerate(prefix: "layers/") { layers.insert(String($0.path.split(separator: "/")[1])); return true }
        #expect(layers.count == 12)
        for i in 6..<12 {
            let v = try store.open(name("v\(i)"), mode: .readOnly)
            #expect(try v.read(at: 0, length: 3 << 20) == block(i, 0) + block(i, 1) + block(i, 2))
            #expect(try store.verify(name("v\(i)")).ok && (try store.verify(name("v\(i)-s")).ok))
        }
    }

    /// Another node breaks a paused holder's lock with --force and takes over:
    /// the holder's later map update fails, by the version check alone
    /// (fencing off) and by the cluster's blocklist (fencing on).
    @Test(arguments: [false, true])
    func takeOverAfterForce(fence: Bool) throws {
        let url = RadosTestPool.url("take")!
        defer { RadosTestPool.removeAll(url) }
        let aObjects = try RadosTestPool.objects(url), bObjects = try RadosTestPool.objects(url)
        bObjects.fenceOnForce = fence
        let a = try VolumeStore(objects: aObjects, node: "node-a"), b = try VolumeStore(objects: bObjects, node: "node-b")
        try a.create(name("v"), size: .mebibytes(16), blockSize: 1 << 20)
        let va = try a.open(name("v"))
        try va.write(at: 0, [UInt8](repeating: 1, count: 4 << 20))
        try va.flush()
        // node-a is "paused" here; node-b breaks its lock and writes.
        try b.unlock(name("v"), owner: LockOwner(node: "node-b", token: ""), force: true)
        let vb = try b.open(name("v"))
        try vb.write(at: 0, [UInt8](repeating: 2, count: 4 << 20))
        try vb.flush()
        try vb.close()
        // node-a wakes up and flushes.
        do {
            try va.write(at: 8 << 20, [UInt8](repeating: 3, count: 1 << 20))
            try va.flush()
            try va.close()
            Issue.record("the stale holder's flush succeeded")
        } catch let e as StoreError {
            #expect(e.code == .locked)
            #expect(e.description.contains(fence ? "blocklisted" : "changed by another writer"), "\(e)")
        }
        #expect(try b.open(name("v"), mode: .readOnly).read(at: 0, length: 4 << 20) == [UInt8](repeating: 2, count: 4 << 20))
        if fence {
            #expect(try b.verify(name("v")).ok)
        }
    }
}

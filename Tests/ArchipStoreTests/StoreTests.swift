import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

func name(_ s: String) -> VolumeName { try! VolumeName(s) }

/// Runs on every backend (`dir`; `rados` under make rados-test): each test
/// gets a store of its own from `TestBackend` and removes it at the end.
@Suite struct StoreBehaviour {
    @Test(arguments: TestBackend.persistent)
    func thinCreateWritesOnlyTheMap(_ backend: TestBackend) throws {
        let t = try backend.store("thin")
        defer { t.remove() }
        let store = t.store
        try store.create(name("big"), size: .tebibytes(1))
        #expect(try t.count(prefix: "layers/") == 1)
        let v = try store.open(name("big"), mode: .readOnly)
        #expect(try v.read(at: (1 << 40) - 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(throws: StoreError.self) { try v.read(at: (1 << 40) - 4095, length: 4096) }
    }

    @Test(arguments: TestBackend.persistent)
    func sixteenTebibytes(_ backend: TestBackend) throws {
        let t = try backend.store("16t")
        defer { t.remove() }
        let store = t.store
        try store.create(name("huge"), size: .tebibytes(16))
        try store.withVolume(name("huge")) { v in
            try v.write(at: (16 << 40) - 3, [1, 2, 3])
        }
        let v = try store.open(name("huge"), mode: .readOnly)
        #expect(try v.read(at: (16 << 40) - 4, length: 4) == [0, 1, 2, 3])
    }

    @Test(arguments: TestBackend.persistent)
    func duplicateAndMissingNames(_ backend: TestBackend) throws {
        let t = try backend.store("names")
        defer { t.remove() }
        let store = t.store
        try store.create(name("a"), size: .mebibytes(8))
        #expect(throws: StoreError.self) { try store.create(name("a"), size: .mebibytes(8)) }
        #expect(throws: StoreError.self) { try store.open(name("nope")) }
        #expect(throws: StoreError.self) { try store.clone(name("a"), as: name("b")) }   // a volume, not a snapshot
        #expect(throws: StoreError.self) { try store.hash(name("a")) }
    }

    @Test(arguments: TestBackend.persistent)
    func locksNameTheHolder(_ backend: TestBackend) throws {
        let t = try backend.store("locks", node: "node-a")
        defer { t.remove() }
        let store = t.store
        try store.create(name("v"), size: .mebibytes(8))
        let held = try store.open(name("v"))
        let other = try t.node("node-b")
        do {
            _ = try other.open(name("v"))
            Issue.record("second node opened a held volume")
        } catch let e as StoreError {
            #expect(e.code == .locked)
            #expect(e.description.contains("node-a"))
        }
        #expect(throws: StoreError.self) { try other.remove(name("v")) }
        // Breaking it takes an explicit force.
        #expect(throws: StoreError.self) { try other.unlock(name("v"), owner: LockOwner(node: "node-b", token: ""), force: false) }
        try other.unlock(name("v"), owner: LockOwner(node: "node-b", token: ""), force: true)
        let taken = try other.open(name("v"))
        try taken.close()
        _ = held
    }

    @Test(arguments: TestBackend.persistent)
    func sharedOpenForMigration(_ backend: TestBackend) throws {
        let t = try backend.store("shared", node: "src")
        defer { t.remove() }
        let a = t.store
        try a.create(name("m"), size: .mebibytes(8))
        let b = try t.node("dst")
        let va = try a.open(name("m"), mode: .shared)
        let vb = try b.open(name("m"), mode: .shared)
        #expect(throws: StoreError.self) { try t.node("third").open(name("m")) }
        try va.write(at: 100, Array("migrating".utf8))
        try va.close()
        #expect(try vb.read(at: 100, length: 9) == Array("migrating".utf8))
        try vb.write(at: 4 << 20, [7])
        try vb.close()
        #expect(try a.lockState(name("m")) == nil)
    }

    @Test(arguments: TestBackend.persistent)
    func corruptedMapIsRefusedNamingIt(_ backend: TestBackend) throws {
        let t = try backend.store("corrupt")
        defer { t.remove() }
        let store = t.store
        try store.create(name("c"), size: .mebibytes(8))
        try store.withVolume(name("c")) { try $0.write(at: 0, [1, 2, 3]) }
        let layer = try store.info(name("c")).layer
        // Damaged behind the store's back, by another process.
        let outside = try t.outsideObjects()
        let map = ObjectName(validating: "layers/\(layer)/map")!
        var bytes = try outside.readAll(map)
        bytes[bytes.count / 2] ^= 0x01
        try outside.put(map, bytes, durable: true)
        for action in ["open", "verify", "info"] {
            do {
                switch action {
                case "open": _ = try store.open(name("c"), mode: .readOnly)
                case "verify": _ = try store.verify(name("c"))
                default: _ = try store.info(name("c"))
                }
                Issue.record("\(action) accepted a corrupted map")
            } catch let e as StoreError {
                #expect(e.code == .corrupt)
                #expect(e.description.contains("layers/\(layer)/map"))
            }
        }
        // Truncated, too.
        try outside.put(map, Array(bytes.prefix(40)), durable: true)
        #expect(throws: StoreError.self) { try store.open(name("c"), mode: .readOnly) }
    }

    @Test(arguments: TestBackend.persistent)
    func deletedOrDamagedBlocksAreReportedNotReadAsZero(_ backend: TestBackend) throws {
        let t = try backend.store("damaged")
        defer { t.remove() }
        let store = t.store
        try store.create(name("d"), size: .mebibytes(16))
        let data = (0..<(12 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try store.withVolume(name("d")) { try $0.write(at: 0, data) }
        let layer = try store.info(name("d")).layer
        let outside = try t.outsideObjects()
        #expect(try outside.remove(ObjectName(validating: "layers/\(layer)/b00000001")!))
        let damaged = ObjectName(validating: "layers/\(layer)/b00000002")!
        try [UInt8(0xFF)].withUnsafeBytes { try outside.write(damaged, at: 100, $0) }
        try outside.syncContents(damaged)
        let r = try store.verify(name("d"))
        #expect(!r.ok)
        #expect(r.problems.map(\.block).sorted() == [1, 2])
        #expect(r.problems.contains { $0.problem.contains("missing") })
        let v = try store.open(name("d"), mode: .readOnly)
        do {
            _ = try v.read(at: 4 << 20, length: 10)
            Issue.record("read of a block whose object is gone returned data")
        } catch let e as StoreError {
            #expect(e.code == .corrupt)
        }
    }

    @Test(arguments: TestBackend.persistent)
    func snapshotWithClonesCannotBeRemoved(_ backend: TestBackend) throws {
        let t = try backend.store("clones")
        defer { t.remove() }
        let store = t.store
        try store.create(name("base"), size: .mebibytes(8))
        try store.snapshot(name("base"), as: name("s1"))
        try store.clone(name("s1"), as: name("c1"))
        do {
            try store.remove(name("s1"))
            Issue.record("removed a snapshot with a clone")
        } catch let e as StoreError {
            #expect(e.code == .hasChildren)
            #expect(e.description.contains("c1"))
        }
        try store.remove(name("c1"))
        try store.remove(name("s1"))
        #expect(try store.list().map(\.name) == ["base"])
    }

    @Test(arguments: TestBackend.persistent)
    func shrinkNeedsPermissionAndZeroesTheTail(_ backend: TestBackend) throws {
        let t = try backend.store("shrink")
        defer { t.remove() }
        let store = t.store
        try store.create(name("r"), size: .mebibytes(8))
        try store.withVolume(name("r")) { v in
            try v.write(at: 0, [UInt8](repeating: 0xAB, count: 8 << 20))
            #expect(throws: StoreError.self) { try v.resize(to: .mebibytes(4), allowShrink: false) }
            try v.resize(to: ByteCount(3 << 20 + 512), allowShrink: true)
            try v.resize(to: .mebibytes(8), allowShrink: false)
            #expect(try v.read(at: 3 << 20 + 500, length: 12) == [UInt8](repeating: 0xAB, count: 12))
            #expect(try v.read(at: 3 << 20 + 512, length: 4096) == [UInt8](repeating: 0, count: 4096))
            #expect(try v.read(at: 7 << 20, length: 4096) == [UInt8](repeating: 0, count: 4096))
        }
        #expect(try store.verify(name("r")).ok)
    }

    @Test(arguments: TestBackend.persistent)
    func hashSharesBlocksAcrossSnapshots(_ backend: TestBackend) throws {
        let t = try backend.store("hash")
        defer { t.remove() }
        let store = t.store
        var rng = SplitMix(42)
        let data = (0..<(5 << 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for n in ["x", "y"] {
            try store.create(name(n), size: .mebibytes(12))
            try store.withVolume(name(n)) { try $0.write(at: 0, data) }
            try store.snapshot(name(n), as: name(n + "-snap"))
        }
        let hx = try store.hash(name("x-snap"))
        let hy = try store.hash(name("y-snap"))
        #expect(hx.topHash == hy.topHash)
        #expect(hx.hashmap.hashes.count == 3)
        #expect(hx.hashmap.bytes == 12 << 20)
        #expect(hx.written == 2 && hy.written == 0)
        #expect(hx.hashmap.hashes.last == ContentHash.ofEmpty.hex)
        // Pithos' own layout: aa/bb/cc/<hash> (on dir, readable as a block folder).
        let first = try #require(ContentHash(hex: hx.hashmap.hashes[0]))
        let object = try #require(ObjectName(validating: "blocks/" + PithosBlockFolder.relativePath(for: first)))
        #expect(try t.outsideObjects().readAll(object) == Array(data[0..<(4 << 20)]))
        if backend == .dir {
            let folder = PithosBlockFolder(root: t.location + "/blocks")
            #expect(try folder.read(first, blockSize: 4 << 20) == Array(data[0..<(4 << 20)]))
        }
        // Readers and verify still see the same bytes after the conversion.
        let v = try store.open(name("x"), mode: .readOnly)
        #expect(try v.read(at: 0, length: data.count) == data)
        #expect(try store.verify(name("x")).ok)
        #expect(try store.verify(name("y-snap")).ok)
    }

    @Test(arguments: TestBackend.persistent)
    func crashBeforeFlushKeepsFlushedDataAndVerifyStaysClean(_ backend: TestBackend) throws {
        let t = try backend.store("crash")
        defer { t.remove() }
        let store = t.store
        try store.create(name("k"), size: .mebibytes(8))
        let v = try store.open(name("k"))
        try v.write(at: 0, [UInt8](repeating: 1, count: 4 << 20))
        try v.flush()
        try v.write(at: 10, [UInt8](repeating: 2, count: 100))   // in place: logged intent
        try v.write(at: 5 << 20, [3])                             // copy-on-write, unflushed
        // The process "dies": no close. Another node looks.
        let other = try t.node("n2")
        let r = try other.verify(name("k"))
        #expect(r.ok)
        #expect(r.pending == [0])
        try other.unlock(name("k"), owner: LockOwner(node: "n2", token: ""), force: true)
        let w = try other.open(name("k"))
        #expect(try w.read(at: 0, length: 10) == [UInt8](repeating: 1, count: 10))
        try w.close()
        let after = try other.verify(name("k"))
        #expect(after.ok && after.pending.isEmpty)
    }

    @Test(arguments: TestBackend.persistent)
    func gcRemovesOnlyWhatNothingReferences(_ backend: TestBackend) throws {
        let t = try backend.store("gc")
        defer { t.remove() }
        let store = t.store
        try store.create(name("g"), size: .mebibytes(16))
        try store.withVolume(name("g")) { try $0.write(at: 0, [UInt8](repeating: 9, count: 8 << 20)) }
        try store.snapshot(name("g"), as: name("g-s"))
        _ = try store.hash(name("g-s"))
        try store.create(name("h"), size: .mebibytes(16))
        let dry = try store.gc(apply: false, grace: 0)
        #expect(dry.unreferencedContentBlocks == 0 && dry.deadLayers.isEmpty)
        try store.remove(name("g"))
        try store.remove(name("g-s"))
        let found = try store.gc(apply: false, grace: 0)
        #expect(found.unreferencedContentBlocks == 1)
        let done = try store.gc(apply: true, grace: 0)
        #expect(done.unreferencedContentBlocks == 1)
        #expect(try store.gc(apply: false, grace: 0).unreferencedContentBlocks == 0)
        #expect(try store.verify(name("h")).ok)
    }

    @Test(arguments: TestBackend.persistent)
    func snapshotCostDoesNotDependOnSize(_ backend: TestBackend) throws {
        let t = try backend.store("snapcost")
        defer { t.remove() }
        let store = t.store
        try store.create(name("t"), size: .tebibytes(1))
        try store.withVolume(name("t")) { v in
            for i in 0..<300 { try v.write(at: UInt64(i) * (3 << 30), [1]) }
        }
        try store.snapshot(name("t"), as: name("t-s"))
        try store.clone(name("t-s"), as: name("t-c"))
        // The snapshot's layer is the volume's old map, not a copy.
        let info = try store.info(name("t"))
        #expect(info.blocks == 0)
        #expect(info.chain.first?.names == ["t-s"])
        #expect(try store.info(name("t-s")).blocks == 300)
    }
}

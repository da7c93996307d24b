import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// The defects of issue 15 the fault-injection seam reproduces, one test
/// each (the sweep in FaultInjectionTests.swift finds them too).
@Suite struct FaultDefects {
    static let bs: UInt32 = 64 << 10

    /// A volume of 4 blocks whose block 2 is this layer's own (owned), filled with `fill`.
    func ownedBlock(_ store: VolumeStore, fill: UInt8 = 0xAA) throws {
        try store.create(name("v"), size: ByteCount(4 * UInt64(Self.bs)), blockSize: Self.bs)
        try store.withVolume(name("v")) { try $0.write(at: 2 * UInt64(Self.bs), [UInt8](repeating: fill, count: Int(Self.bs))) }
    }

    /// Issue 15, defect 3: an in-place write into an owned block fails half
    /// way (a short write, EIO). The block must not be left with a stale
    /// checksum: verify finds no BAD block, and each 4 KiB slot holds the
    /// old bytes or the failed write's, never anything else.
    @Test(arguments: TestBackend.persistent)
    func failedInPlaceWriteLeavesNoStaleChecksum(_ backend: TestBackend) throws {
        let t = try backend.store("short-write")
        defer { t.remove() }
        try ownedBlock(t.store)
        let (store, faulty) = try t.faulty()
        let v = try store.open(name("v"))
        // Write #1 is the intent's log append; #2 the data, into the block's object.
        faulty.arm(FaultPlan(.write, 2, .shortWrite))
        let new = [UInt8](repeating: 0x55, count: 32 << 10)
        #expect(throws: StoreError.self) { try v.write(at: 2 * UInt64(Self.bs) + 8192, new) }
        #expect(faulty.faultsFired == 1)
        faulty.disarm()
        try v.close()

        let check = try t.node("n1")
        let r = try check.verify(name("v"))
        #expect(r.problems.isEmpty, "\(r.problems.map(\.description))")
        let bytes = try check.open(name("v"), mode: .readOnly).read(at: 2 * UInt64(Self.bs), length: Int(Self.bs))
        for s in 0..<(Int(Self.bs) / 4096) {
            let slot = bytes[(s * 4096)..<((s + 1) * 4096)]
            let inWrite = s >= 2 && s < 10
            #expect(slot.allSatisfy { $0 == 0xAA } || (inWrite && slot.allSatisfy { $0 == 0x55 }), "slot \(s)")
        }
    }

    /// Issue 15, defect 4: the compaction at close fails (ENOSPC on the map).
    /// What was flushed stays, and the lock is released: the same node opens
    /// the volume again without --force.
    @Test(arguments: TestBackend.persistent)
    func failedCompactionAtCloseReleasesTheLock(_ backend: TestBackend) throws {
        let t = try backend.store("close-enospc")
        defer { t.remove() }
        try ownedBlock(t.store)
        let (store, faulty) = try t.faulty()
        let v = try store.open(name("v"))
        try v.write(at: 2 * UInt64(Self.bs), [UInt8](repeating: 0x77, count: 4096))
        try v.flush()
        faulty.arm(FaultPlan(.put, 1, .enospc, persistent: true))
        #expect(throws: StoreError.self) { try v.close() }
        #expect(faulty.faultsFired >= 1)

        let check = try t.node("n1")
        #expect(try check.lockState(name("v"))?.holders.isEmpty ?? true)
        let again = try check.open(name("v"))
        #expect(try again.read(at: 2 * UInt64(Self.bs), length: 4096) == [UInt8](repeating: 0x77, count: 4096))
        try again.close()
        #expect(try check.verify(name("v")).problems.isEmpty)
    }

    /// A compaction whose map put failed after its rename (the folder's
    /// fsync failed): the map on disk is the new generation, the log the old
    /// one. A flush after that must not append to the old log (a reader
    /// would ignore it): flushed data survives a crash.
    @Test(arguments: TestBackend.persistent)
    func flushAfterAFailedCompactionIsDurable(_ backend: TestBackend) throws {
        let t = try backend.store("compact-after")
        defer { t.remove() }
        try ownedBlock(t.store)
        let (store, faulty) = try t.faulty()
        let v = try store.open(name("v"))
        try v.write(at: 2 * UInt64(Self.bs), [UInt8](repeating: 0x11, count: 4096))
        try v.flush()
        faulty.arm(FaultPlan(.put, 1, .afterEffect))
        #expect(throws: StoreError.self) { try v.resize(to: ByteCount(5 * UInt64(Self.bs)), allowShrink: false) }
        faulty.disarm()
        try v.write(at: 2 * UInt64(Self.bs) + 4096, [UInt8](repeating: 0x22, count: 4096))
        try v.flush()
        // A crash: the writer never closes; its lock is broken.
        let check = try t.node("n1")
        try check.unlock(name("v"), owner: LockOwner(node: "n1", token: ""), force: true)
        let r = try check.open(name("v"), mode: .readOnly)
        #expect(try r.read(at: 2 * UInt64(Self.bs) + 4096, length: 4096) == [UInt8](repeating: 0x22, count: 4096))
        #expect(try r.read(at: 2 * UInt64(Self.bs), length: 4096) == [UInt8](repeating: 0x11, count: 4096))
        #expect(try check.verify(name("v")).problems.isEmpty)
    }

    /// Issue 15, defect 8: one damaged map. The other names are listed, the
    /// damaged one is named, and gc removes no content block or dead layer
    /// (the damaged map may reference any), but says so.
    @Test(arguments: TestBackend.persistent)
    func oneDamagedMapNeitherHidesTheRestNorLetsGCDelete(_ backend: TestBackend) throws {
        let t = try backend.store("damaged-map")
        defer { t.remove() }
        let store = t.store
        for n in ["a", "b", "c"] {
            try store.create(name(n), size: ByteCount(4 * UInt64(Self.bs)), blockSize: Self.bs)
        }
        // An unreferenced content block, old enough for gc.
        let stray = [UInt8](repeating: 9, count: 4096)
        let h = stray.withUnsafeBytes { SHA256.blockHash($0) }
        _ = try store.objects.create(StoreLayout.content(h), stray, durable: true)
        let b = try store.record(name("b"))
        try t.outsideObjects().put(StoreLayout.map(b.layer), [UInt8]("not a map".utf8), durable: true)

        let (items, damaged) = try store.listAll()
        #expect(items.map(\.name) == ["a", "c"])
        #expect(damaged.map(\.name) == ["b"])

        let r = try store.gc(apply: true, grace: 0)
        #expect(r.withheld)
        #expect(r.damaged.count == 1 && r.damaged[0].hasPrefix("b:"), "\(r.damaged)")
        #expect(r.unreferencedContentBlocks == 0)
        #expect(try store.objects.exists(StoreLayout.content(h)))
        #expect(try store.objects.exists(StoreLayout.map(b.layer)))
    }

    /// Issue 15, defect 9: a fill of a new name that another fill (or a
    /// create) beat to it fails instead of switching the winner's volume.
    @Test func fillOfANewNameNeverReplacesTheWinner() throws {
        let t = try TestBackend.dir.store("fill-race")
        defer { t.remove() }
        let store = t.store
        let size = 2 * UInt64(Self.bs)
        func blocks(_ fill: UInt8, _ stage: FillStage) throws {
            for b in 0..<2 {
                let bytes = [UInt8](repeating: fill, count: Int(Self.bs))
                try bytes.withUnsafeBytes { _ = try stage.storeBlock(b, $0, hash: SHA256.blockHash($0)) }
            }
        }
        // A second fill while the first runs: refused at its start.
        let first = try FillStage.begin(store: store, target: name("x"), imageSize: size, blockSize: Int(Self.bs), sourceID: "one", resume: false)
        #expect(throws: StoreError.self) {
            _ = try FillStage.begin(store: store, target: name("x"), imageSize: size, blockSize: Int(Self.bs), sourceID: "two", resume: false)
        }
        try blocks(1, first)
        try first.commit(volumeSize: size, mustCreate: true)
        // One that saw no volume before the first committed, and began after.
        let late = try FillStage.begin(store: store, target: name("x"), imageSize: size, blockSize: Int(Self.bs), sourceID: "two", resume: false)
        try blocks(2, late)
        #expect(throws: StoreError.self) { try late.commit(volumeSize: size, mustCreate: true) }
        #expect(try store.open(name("x"), mode: .readOnly).read(at: 0, length: 4) == [1, 1, 1, 1])
        #expect(try store.interruptedFills().isEmpty)
    }
}

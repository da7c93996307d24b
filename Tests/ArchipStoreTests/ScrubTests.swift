import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// An object store that counts the reads of each object (and can call a
/// hook on each), forwarding everything to another.
final class ReadCountingStore: ObjectStore, @unchecked Sendable {
    let inner: any ObjectStore
    let counts = Locked<[String: Int]>([:])
    let onRead: @Sendable (ObjectName) -> Void
    init(_ inner: any ObjectStore, onRead: @escaping @Sendable (ObjectName) -> Void = { _ in }) {
        self.inner = inner
        self.onRead = onRead
    }
    func reads(under prefix: String) -> Int { counts.withLock { $0.filter { $0.key.hasPrefix(prefix) }.values.reduce(0, +) } }
    private func count(_ n: ObjectName) {
        counts.withLock { $0[n.path, default: 0] += 1 }
        onRead(n)
    }
    var location: String { inner.location }
    func read(_ name: ObjectName, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        count(name); return try inner.read(name, at: offset, into: buffer)
    }
    func readAll(_ name: ObjectName) throws -> [UInt8] { count(name); return try inner.readAll(name) }
    func put(_ name: ObjectName, _ data: UnsafeRawBufferPointer, length: UInt64, durable: Bool) throws {
        try inner.put(name, data, length: length, durable: durable)
    }
    func create(_ name: ObjectName, _ data: UnsafeRawBufferPointer, durable: Bool) throws -> Bool { try inner.create(name, data, durable: durable) }
    func write(_ name: ObjectName, at offset: UInt64, _ data: UnsafeRawBufferPointer) throws { try inner.write(name, at: offset, data) }
    func sync(_ names: [ObjectName]) throws { try inner.sync(names) }
    func syncContents(_ name: ObjectName) throws { try inner.syncContents(name) }
    func remove(_ name: ObjectName) throws -> Bool { try inner.remove(name) }
    func removeAll(prefix: String) throws { try inner.removeAll(prefix: prefix) }
    func removeAll(prefixes: [String]) throws { try inner.removeAll(prefixes: prefixes) }
    func rename(_ from: ObjectName, to: ObjectName) throws { try inner.rename(from, to: to) }
    func stat(_ name: ObjectName) throws -> ObjectInfo? { try inner.stat(name) }
    func enumerate(prefix: String, _ body: (ObjectName) throws -> Bool) throws { try inner.enumerate(prefix: prefix, body) }
    func enumerate(prefixes: [String], _ body: (ObjectName) throws -> Bool) throws { try inner.enumerate(prefixes: prefixes, body) }
    func acquireLock(_ name: ObjectName, owner: LockOwner, mode: LockMode) throws { try inner.acquireLock(name, owner: owner, mode: mode) }
    func releaseLock(_ name: ObjectName, owner: LockOwner, force: Bool) throws -> Bool { try inner.releaseLock(name, owner: owner, force: force) }
    func lockState(_ name: ObjectName) throws -> LockState? { try inner.lockState(name) }
    func removeStaleTemporaries(olderThan date: Date) throws -> Int { try inner.removeStaleTemporaries(olderThan: date) }
    func forgetCached(_ name: ObjectName) { inner.forgetCached(name) }
    func startWriteback(_ name: ObjectName) { inner.startWriteback(name) }
}

/// A content block or an owned block (not a map, log or record).
func isBlock(_ path: String) -> Bool {
    if path.hasPrefix("blocks/") { return true }
    let last = path.split(separator: "/").last.map(String.init) ?? ""
    return path.hasPrefix("layers/") && StoreLayout.ownedIndex(last) != nil
}

/// `verify --all` and `repair` (issue 16, section 3), on every backend.
@Suite struct Scrub {
    static let bs = 256 << 10
    static let blocks = 8
    static let clones = (0..<12).map { String(format: "c%02d", $0) }

    /// Pseudo-random bytes (xorshift): no two blocks alike, so none is shared by accident.
    static func data(_ count: Int) -> [UInt8] {
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            withUnsafeBytes(of: x) { w in
                for j in 0..<min(8, count - i) { out[i + j] = w[j] }
            }
            i += 8
        }
        return out
    }

    /// A golden image "img" (8 blocks of 256 KiB), its hashed snapshot "gold"
    /// (content blocks), 12 clones; c05 rewrote block 3 (an owned block) and
    /// was snapshotted as "c05s", which freezes that block in its own layer.
    static func fixture(_ store: VolumeStore) throws {
        try store.create(name("img"), size: ByteCount(UInt64(blocks * bs)), blockSize: UInt32(bs))
        try store.withVolume(name("img")) { try $0.write(at: 0, data(blocks * bs)) }
        try store.snapshot(name("img"), as: name("gold"))
        _ = try store.hash(name("gold"))
        for c in clones { try store.clone(name("gold"), as: name(c)) }
        try store.withVolume(name("c05")) { try $0.write(at: UInt64(3 * bs), [UInt8](repeating: 0xA7, count: bs)) }
        try store.snapshot(name("c05"), as: name("c05s"))
    }

    static func content(_ store: VolumeStore, block: UInt32) throws -> ObjectName {
        try CheckedReads.contentObject(store, "gold", block: block)
    }

    /// The frozen layer c05s holds c05's rewritten block.
    static func ownedBlock3(_ store: VolumeStore) throws -> ObjectName {
        StoreLayout.owned(try CheckedReads.layer(store, "c05s"), 3)
    }

    static func range(_ block: Int) -> [ScrubRange] { [ScrubRange(offset: UInt64(block * bs), length: UInt64(bs))] }

    static var everyName: Set<String> { Set(["img", "gold", "c05s"] + clones) }

    static func finding(_ r: ScrubReport, _ obj: ObjectName, sourceLocation: SourceLocation = #_sourceLocation) throws -> ScrubFinding {
        try #require(r.findings.first { $0.object == obj.path }, "no finding for \(obj) in \(r.findings.map(\.object))", sourceLocation: sourceLocation)
    }

    @Test(arguments: TestBackend.persistent)
    func verifyAllReadsEachObjectOnceAndNamesEveryReferrer(_ backend: TestBackend) throws {
        let t = try backend.store("scrub-all")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        let shared = try Scrub.content(t.store, block: 2)
        let gone = try Scrub.content(t.store, block: 5)
        let owned = try Scrub.ownedBlock3(t.store)
        try CheckedReads.flip(t, shared, at: 1000)
        #expect(try t.outsideObjects().remove(gone))
        try CheckedReads.flip(t, owned, at: 5000)
        // A damaged map: c09's own (top) layer.
        let c09map = StoreLayout.map(try CheckedReads.layer(t.store, "c09"))
        try CheckedReads.replace(t, c09map, with: Array("not a map".utf8))

        let counting = ReadCountingStore(try t.outsideObjects())
        let store = try VolumeStore(objects: counting, node: "scrubber")
        var options = ScrubOptions()
        options.jobs = 3
        let r = try store.scrub(options)

        // Each block object read once: 8 content blocks (one missing) and c05s's owned block.
        #expect(r.objects == 9)
        #expect(counting.counts.withLock { $0.filter { isBlock($0.key) }.values.allSatisfy { $0 == 1 } })
        #expect(counting.reads(under: "blocks/") == 8)
        #expect(r.objectsChecked == 9)
        #expect(r.bytesChecked == UInt64(7 * Scrub.bs + Scrub.bs + Scrub.bs / 1024))   // 7 content blocks (one damaged), one owned block with its table

        let f2 = try Scrub.finding(r, shared)
        #expect(f2.state == .damaged && f2.kind == "content")
        // Every name but c09 (its map is unreadable) reads block 2 from it.
        #expect(Set(f2.references.map(\.name)) == Scrub.everyName.subtracting(["c09"]))
        #expect(f2.references.allSatisfy { $0.ranges == Scrub.range(2) })
        #expect(f2.references.first { $0.name == "gold" }?.kind == "snapshot")

        let f5 = try Scrub.finding(r, gone)
        #expect(f5.state == .missing)
        #expect(Set(f5.references.map(\.name)) == Scrub.everyName.subtracting(["c09"]))

        let f3 = try Scrub.finding(r, owned)
        #expect(f3.kind == "owned" && f3.state == .damaged)
        #expect(Set(f3.references.map(\.name)) == ["c05", "c05s"])
        #expect(f3.references.allSatisfy { $0.ranges == Scrub.range(3) })
        #expect(f3.problem.contains("page 1"))

        let fm = try Scrub.finding(r, c09map)
        #expect(fm.kind == "map" && fm.references.map(\.name) == ["c09"])
        #expect(r.findings.count == 4)
        #expect(!r.ok)

        // The last result of each name is kept for the operator's tools.
        let c05 = try #require(try t.store.lastVerification(name("c05")))
        #expect(c05.damaged == 2 && c05.missing == 1)
        #expect(try t.store.lastVerification(name("c01"))?.damaged == 1)
        #expect(try t.store.namesWithDamage().map(\.name).contains("c05s"))
    }

    @Test(arguments: TestBackend.persistent)
    func cleanStoreIsOkAndRecordsIt(_ backend: TestBackend) throws {
        let t = try backend.store("scrub-clean")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        var options = ScrubOptions()
        options.names = [name("c05")]
        let r = try t.store.scrub(options)
        #expect(r.ok && r.findings.isEmpty)
        // c05 reaches gold's 8 content blocks and c05s's owned block 3.
        #expect(r.objects == 9 && r.names == 1)
        #expect(try t.store.lastVerification(name("c05"))?.ok == true)
        #expect(try t.store.lastVerification(name("c01")) == nil)
        #expect(try t.store.namesWithDamage().isEmpty)
    }

    /// A removed name's damage result goes with it: no stale entry naming a
    /// volume that is gone, and a volume made again under that name (in the
    /// same second: `createdAt` is seconds) does not inherit it. A renamed
    /// name keeps its result under the new name.
    @Test(arguments: TestBackend.persistent)
    func removeAndRenameCarryTheLastResult(_ backend: TestBackend) throws {
        let t = try backend.store("scrub-remove")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        try CheckedReads.flip(t, try Scrub.content(t.store, block: 2), at: 1000)
        _ = try t.store.scrub(ScrubOptions())
        #expect(try t.store.lastVerification(name("c07"))?.damaged == 1)
        #expect(t.store.loadResults().names["c07"] != nil)

        try t.store.remove(name("c07"))
        #expect(t.store.loadResults().names["c07"] == nil, "a removed volume's scrub result is kept")
        #expect(try !t.store.namesWithDamage().map(\.name).contains("c07"))
        try t.store.create(name("c07"), size: ByteCount(UInt64(Scrub.bs)), blockSize: UInt32(Scrub.bs))
        #expect(try t.store.lastVerification(name("c07")) == nil)

        try t.store.rename(name("c08"), to: name("c08b"))
        #expect(t.store.loadResults().names["c08"] == nil)
        let moved = try #require(try t.store.lastVerification(name("c08b")))
        #expect(moved.damaged == 1 && moved.name == "c08b")
    }

    /// A run stopped part way (as a kill leaves its last checkpoint) goes on
    /// where it stopped: what it checked is not read again, what it found is kept.
    @Test(arguments: TestBackend.persistent)
    func stoppedRunResumesWithoutRereading(_ backend: TestBackend) throws {
        let t = try backend.store("scrub-resume")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        // Damage the first object in the scrub's order, found before the stop.
        var first: ObjectName?
        try t.objects.enumerate(prefix: "blocks/") { o in
            if first == nil || o.path < first!.path { first = o }
            return true
        }
        let damaged = try #require(first)
        try CheckedReads.flip(t, damaged, at: 10)

        let blockReads = Locked(0)
        let counting = ReadCountingStore(try t.outsideObjects()) { o in
            if isBlock(o.path) { blockReads.withLock { $0 += 1 } }
        }
        let store = try VolumeStore(objects: counting, node: "scrubber")
        var options = ScrubOptions()
        options.jobs = 1
        options.checkpointObjects = 1
        options.stop = { blockReads.withLock { $0 } >= 4 }
        let r1 = try store.scrub(options)
        #expect(r1.interrupted)
        #expect(r1.objectsChecked == 4)
        #expect(try t.objects.exists(ScrubLayout.checkpoint))

        let counting2 = ReadCountingStore(try t.outsideObjects())
        let store2 = try VolumeStore(objects: counting2, node: "scrubber")
        var options2 = ScrubOptions()
        options2.jobs = 2
        let r2 = try store2.scrub(options2)
        #expect(r2.resumed && !r2.interrupted)
        // 9 objects: 4 checked before the stop, 5 now; none of the first 4 read again.
        #expect(counting2.counts.withLock { $0.filter { isBlock($0.key) }.values.reduce(0, +) } == 5)
        #expect(counting2.counts.withLock { $0[damaged.path] } == nil)
        #expect(r2.objectsChecked == 9 && r2.objectsCheckedBefore == 4)
        #expect(r2.findings.map(\.object) == [damaged.path])
        #expect(try !t.objects.exists(ScrubLayout.checkpoint))

        // Finished: the next run starts over and reads everything.
        let counting3 = ReadCountingStore(try t.outsideObjects())
        let r3 = try VolumeStore(objects: counting3, node: "scrubber").scrub(ScrubOptions())
        #expect(!r3.resumed && counting3.reads(under: "blocks/") == 8)
    }

    @Test func maxRateBoundsTheRate() throws {
        let t = try TestBackend.dir.store("scrub-rate")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        var options = ScrubOptions()
        options.jobs = 4
        options.maxRate = 4 << 20   // 4 MiB/s; the scrub reads about 2.25 MiB
        let start = Date()
        let r = try t.store.scrub(options)
        let elapsed = Date().timeIntervalSince(start)
        #expect(r.ok)
        let floor = Double(r.bytesChecked) / Double(4 << 20)
        // Generous slack: the bound is what matters, not the exact speed.
        #expect(elapsed >= floor * 0.8, "read \(r.bytesChecked) bytes in \(elapsed) s, faster than 4 MiB/s")
    }

    // MARK: repair

    /// The store's content blocks copied into a Pithos-style folder.
    static func blockFolder(_ t: TestStore) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("scrub-blocks-\(UUID().uuidString.prefix(8))").path
        let objects = try t.outsideObjects()
        var list: [ObjectName] = []
        try objects.enumerate(prefix: "blocks/") { list.append($0); return true }
        for o in list {
            let path = dir + "/" + o.path.dropFirst("blocks/".count)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            #expect(FileManager.default.createFile(atPath: path, contents: Data(try objects.readAll(o))))
        }
        return dir
    }

    @Test(arguments: TestBackend.persistent)
    func repairRestoresContentBlocksFromAFolderAndFromAnImage(_ backend: TestBackend) throws {
        let t = try backend.store("repair")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        let folder = try Scrub.blockFolder(t)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let image = FileManager.default.temporaryDirectory.appendingPathComponent("scrub-img-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: image) }
        #expect(FileManager.default.createFile(atPath: image, contents: Data(Scrub.data(Scrub.blocks * Scrub.bs))))
        let hashmap = try t.store.hash(name("gold")).hashmap

        let b2 = try Scrub.content(t.store, block: 2)
        let b5 = try Scrub.content(t.store, block: 5)
        try CheckedReads.flip(t, b2, at: 77)
        #expect(try t.outsideObjects().remove(b5))

        // A source with the wrong bytes under block 2's name is refused; the image has them right.
        let wrong = FileManager.default.temporaryDirectory.appendingPathComponent("scrub-wrong-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        let wrongPath = wrong + "/" + PithosBlockFolder.relativePath(for: try #require(ContentHash(hex: b2.lastComponent)))
        try FileManager.default.createDirectory(atPath: (wrongPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: wrongPath, contents: Data(repeating: 1, count: 1000)))

        let imageSource = try HashmapRepairSource(imageFile: image, hashmap: hashmap)
        let store = try t.node("repairer")
        let dry = try store.repair(names: nil, sources: [BlockFolderRepairSource(root: wrong), imageSource], dryRun: true)
        #expect(dry.restored == 2)
        #expect(try !t.objects.exists(b5))   // a dry run writes nothing

        let r = try store.repair(names: nil, sources: [BlockFolderRepairSource(root: wrong), imageSource], dryRun: false)
        #expect(r.ok && r.restored == 2)
        let a2 = try #require(r.actions.first { $0.finding.object == b2.path })
        #expect(a2.source == imageSource.description)
        #expect(a2.refused.count == 1 && a2.refused[0].contains(wrong))
        #expect(try store.scrub().ok)
        #expect(try store.open(name("c07"), mode: .readOnly).read(at: 0, length: Scrub.blocks * Scrub.bs) == Scrub.data(Scrub.blocks * Scrub.bs))
        #expect(try store.lastVerification(name("c07"))?.ok == true)

        // Again, from the folder of blocks.
        try CheckedReads.flip(t, b5, at: 3)
        let r2 = try store.repair(names: [name("c00")], sources: [BlockFolderRepairSource(root: folder)], dryRun: false)
        #expect(r2.ok && r2.restored == 1 && r2.actions.first?.source?.contains(folder) == true)
        #expect(try t.node("reader").open(name("c00"), mode: .readOnly).read(at: 0, length: Scrub.blocks * Scrub.bs) == Scrub.data(Scrub.blocks * Scrub.bs))
    }

    @Test(arguments: TestBackend.persistent)
    func repairRefusesWrongContentAndReportsOwnedBlocksLost(_ backend: TestBackend) throws {
        let t = try backend.store("repair-lost")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        let owned = try Scrub.ownedBlock3(t.store)
        let b1 = try Scrub.content(t.store, block: 1)
        try CheckedReads.flip(t, owned, at: 9)
        try CheckedReads.flip(t, b1, at: 9)
        let damagedOwned = try t.outsideObjects().readAll(owned)
        let damagedB1 = try t.outsideObjects().readAll(b1)

        // Only a source with the wrong bytes for block 1.
        let wrong = FileManager.default.temporaryDirectory.appendingPathComponent("scrub-wrong-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: wrong) }
        let wrongPath = wrong + "/" + PithosBlockFolder.relativePath(for: try #require(ContentHash(hex: b1.lastComponent)))
        try FileManager.default.createDirectory(atPath: (wrongPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: wrongPath, contents: Data(Scrub.data(Scrub.bs).reversed())))

        let store = try t.node("repairer")
        let r = try store.repair(names: nil, sources: [BlockFolderRepairSource(root: wrong)], dryRun: false)
        #expect(!r.ok && r.restored == 0 && r.lost == 1)
        let lost = try #require(r.actions.first { $0.finding.object == owned.path })
        #expect(lost.result == .lost)
        #expect(Set(lost.finding.references.map(\.name)) == ["c05", "c05s"])
        #expect(lost.finding.references.allSatisfy { $0.ranges == Scrub.range(3) })
        let refused = try #require(r.actions.first { $0.finding.object == b1.path })
        #expect(refused.result == .unrepaired && refused.refused.count == 1)
        // Neither object was touched.
        #expect(try t.outsideObjects().readAll(owned) == damagedOwned)
        #expect(try t.outsideObjects().readAll(b1) == damagedB1)
        #expect(try store.lastVerification(name("c05"))?.damaged == 2)
    }

    @Test func metricsFileIsPrometheusText() throws {
        let t = try TestBackend.dir.store("scrub-metrics")
        defer { t.remove() }
        try Scrub.fixture(t.store)
        try CheckedReads.flip(t, try Scrub.content(t.store, block: 0), at: 1)
        let r = try t.store.scrub()
        let path = t.location + "-archip.prom"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ScrubMetrics.write(ScrubMetrics.text(r, store: t.location), to: path)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let values = Dictionary(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line -> (String, String) in
            let parts = line.split(separator: " ")
            return (String(parts[0].split(separator: "{")[0]), String(parts[1]))
        }, uniquingKeysWith: { a, _ in a })
        #expect(values["archip_scrub_damaged_objects"] == "1")
        #expect(values["archip_scrub_missing_objects"] == "0")
        #expect(values["archip_scrub_objects_checked"] == "9")
        #expect(values["archip_scrub_bytes_checked"] == "\(r.bytesChecked)")
        #expect(Double(values["archip_scrub_last_end_timestamp_seconds"] ?? "") ?? 0 >= Double(values["archip_scrub_last_start_timestamp_seconds"] ?? "x") ?? .infinity)
    }
}

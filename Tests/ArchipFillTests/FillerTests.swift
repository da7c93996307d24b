@testable import ArchipFill
import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

func tempDir(_ tag: String) -> String {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("archip-\(tag)-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func vname(_ s: String) -> VolumeName { try! VolumeName(s) }

/// A random image with an all-zero block in the middle and a short tail.
func makeImage(_ path: String, seed: UInt64 = 7, blocks: Int = 5, tail: Int = 300_000) -> [UInt8] {
    var state = seed
    func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    let bs = 4 << 20
    var bytes = [UInt8](repeating: 0, count: blocks * bs + tail)
    bytes.withUnsafeMutableBytes { p in
        for i in stride(from: 0, to: p.count - 7, by: 8) where !(2 * bs..<3 * bs).contains(i) {
            p.storeBytes(of: next(), toByteOffset: i, as: UInt64.self)
        }
    }
    #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
    return bytes
}

/// Content blocks in the store (`blocks/aa/bb/cc/<hash>`), whatever the backend.
func contentObjects(_ t: TestStore) throws -> Int {
    try t.count(prefix: "blocks/")
}

/// A folder for a test's images, and a store of its own on `backend`
/// (see `TestBackend`); `cleanUp` removes both.
func scratch(_ tag: String, _ backend: TestBackend) throws -> (String, TestStore) {
    let t = try backend.store(tag, node: "n")
    return (tempDir(tag), t)
}

func cleanUp(_ dir: String, _ t: TestStore) {
    try? FileManager.default.removeItem(atPath: dir)
    t.remove()
}

func readAll(_ store: VolumeStore, _ n: String) throws -> [UInt8] {
    let v = try store.open(vname(n), mode: .readOnly)
    return try v.read(at: 0, length: Int(v.size))
}

@Suite struct FillFromFiles {
    @Test(arguments: TestBackend.persistent)
    func fillEqualsSourceAndMatchesTheReferenceHashmap(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("fill", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw")
        let store = t.store
        var r = FillRequest(target: vname("v1"), source: .file(dir + "/img.raw"))
        r.createSize = ByteCount(64 << 20)
        guard case .filled(let result) = try Filler.run(r, store: store) else { Issue.record("not filled"); return }
        let got = try readAll(store, "v1")
        #expect(got.count == 64 << 20)
        #expect(Array(got[0..<image.count]) == image)
        #expect(got[image.count...].allSatisfy { $0 == 0 })
        #expect(result.progress.fetched == 6 && result.written == 5)   // the zero block stores nothing
        #expect(try store.verify(vname("v1")).ok)

        // An independent implementation of Pithos' algorithm agrees.
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("tests/reference/pithos_hashmap.py").path
        py.arguments = ["python3", script, dir + "/img.raw"]
        let out = Pipe()
        py.standardOutput = out
        try py.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        py.waitUntilExit()
        let ref = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let refMap = ref["hashmap"] as! [String: Any]
        #expect(refMap["hashes"] as! [String] == result.hashmap.hashes)
        #expect(refMap["bytes"] as! Int == Int(result.hashmap.bytes))
        #expect(ref["top_hash"] as! String == result.topHash.hex)
    }

    @Test(arguments: TestBackend.persistent)
    func secondFillWritesNoNewBlocks(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("dedup", backend)
        defer { cleanUp(dir, t) }
        _ = makeImage(dir + "/img.raw")
        let store = t.store
        _ = try Filler.run(FillRequest(target: vname("a"), source: .file(dir + "/img.raw")), store: store)
        let before = try contentObjects(t)
        guard case .filled(let second) = try Filler.run(FillRequest(target: vname("b"), source: .file(dir + "/img.raw")), store: store) else {
            Issue.record("not filled"); return
        }
        #expect(second.written == 0)
        #expect(try contentObjects(t) == before)
        #expect(try readAll(store, "a") == (try readAll(store, "b")))
    }

    @Test(arguments: TestBackend.persistent)
    func wholeImageDigestMismatchCommitsNothing(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("sha", backend)
        defer { cleanUp(dir, t) }
        _ = makeImage(dir + "/img.raw")
        let store = t.store
        var r = FillRequest(target: vname("v"), source: .file(dir + "/img.raw"))
        r.sha256 = SHA256.digest(Array("not the image".utf8))
        #expect(throws: StoreError.self) { try Filler.run(r, store: store) }
        #expect(try store.list().isEmpty)
        let real = SHA256.digest([UInt8](FileManager.default.contents(atPath: dir + "/img.raw")!))
        r.sha256 = real
        r.resume = true
        guard case .filled(let ok) = try Filler.run(r, store: store) else { Issue.record("not filled"); return }
        #expect(ok.sha256 == real)
        #expect(ok.progress.resumed == 6 && ok.progress.fetched == 0)
    }

    @Test(arguments: TestBackend.persistent)
    func hashmapMismatchNamesTheBlock(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("mismatch", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw")
        let store = t.store
        try store.create(vname("keep"), size: ByteCount(64 << 20))
        try store.withVolume(vname("keep")) { try $0.write(at: 0, Array("original".utf8)) }
        var hashes = (0..<6).map { i -> ContentHash in
            let lo = i * (4 << 20), hi = min(image.count, lo + (4 << 20))
            return SHA256.blockHash(Array(image[lo..<hi]))
        }
        let good = hashes[3]
        hashes[3] = SHA256.digest(Array("wrong".utf8))
        let map = PithosHashmap(blockSize: 4 << 20, bytes: UInt64(image.count), hashes: hashes)
        #expect(try FileManager.default.createFile(atPath: dir + "/hm.json", contents: map.jsonData()))
        var r = FillRequest(target: vname("keep"), source: .file(dir + "/img.raw"))
        r.hashmap = dir + "/hm.json"
        do {
            _ = try Filler.run(r, store: store)
            Issue.record("a block with the wrong hash was accepted")
        } catch let e as StoreError {
            #expect(e.code == .corrupt)
            #expect(e.description.contains("block 3"))
            #expect(e.description.contains(good.hex) && e.description.contains(hashes[3].hex))
            #expect(e.description.contains(dir + "/img.raw"))
        }
        // The volume is as it was.
        let v = try store.open(vname("keep"), mode: .readOnly)
        #expect(try v.read(at: 0, length: 8) == Array("original".utf8))
    }

    @Test(arguments: TestBackend.persistent)
    func sizeRules(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("sizes", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw", blocks: 3, tail: 0)
        let store = t.store
        try store.create(vname("small"), size: ByteCount(8 << 20))
        #expect(throws: StoreError.self) { try Filler.run(FillRequest(target: vname("small"), source: .file(dir + "/img.raw")), store: store) }
        var grow = FillRequest(target: vname("small"), source: .file(dir + "/img.raw"))
        grow.grow = true
        _ = try Filler.run(grow, store: store)
        #expect(try store.info(vname("small")).size == UInt64(image.count))
        // A smaller image leaves the tail zero, even where the volume had data.
        try store.create(vname("big"), size: ByteCount(32 << 20))
        try store.withVolume(vname("big")) { try $0.write(at: 20 << 20, [UInt8](repeating: 9, count: 4096)) }
        _ = try Filler.run(FillRequest(target: vname("big"), source: .file(dir + "/img.raw")), store: store)
        let got = try readAll(store, "big")
        #expect(got.count == 32 << 20)
        #expect(Array(got[0..<image.count]) == image)
        #expect(got[image.count...].allSatisfy { $0 == 0 })
        var tooSmall = FillRequest(target: vname("new"), source: .file(dir + "/img.raw"))
        tooSmall.createSize = ByteCount(4 << 20)
        #expect(throws: StoreError.self) { try Filler.run(tooSmall, store: store) }
        #expect(try store.list().map(\.name).sorted() == ["big", "small"])
    }
}

@Suite struct FillFromPithosAndStore {
    @Test(arguments: TestBackend.persistent)
    func pithosFolderSourceFetchesOnlyMissingBlocks(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("pithos", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw")
        let origin = try VolumeStore.directory(dir + "/origin", node: "n")
        guard case .filled(let first) = try Filler.run(FillRequest(target: vname("img"), source: .file(dir + "/img.raw")), store: origin) else {
            Issue.record("not filled"); return
        }
        #expect(try FileManager.default.createFile(atPath: dir + "/hm.json", contents: first.hashmap.jsonData()))

        let store = t.store
        var r = FillRequest(target: vname("vm1"), source: .pithos(dir + "/hm.json"))
        r.blocks = dir + "/origin/blocks"   // our content blocks are laid out as Pithos' are
        guard case .filled(let a) = try Filler.run(r, store: store) else { Issue.record("not filled"); return }
        #expect(a.progress.fetched == 5 && a.topHash == first.topHash)
        #expect(Array(try readAll(store, "vm1")[0..<image.count]) == image)

        r.target = vname("vm2")
        guard case .filled(let b) = try Filler.run(r, store: store) else { Issue.record("not filled"); return }
        #expect(b.progress.fetched == 0 && b.progress.reused == 6 && b.written == 0)

        // One flipped byte in one block of the source: the fill names it and makes nothing.
        let victim = dir + "/origin/blocks/" + PithosBlockFolder.relativePath(for: ContentHash(hex: first.hashmap.hashes[4])!)
        var bytes = [UInt8](FileManager.default.contents(atPath: victim)!)
        bytes[1000] ^= 0x01
        #expect(FileManager.default.createFile(atPath: victim, contents: Data(bytes)))
        let freshStore = try backend.store("pithos-fresh", node: "n")
        defer { freshStore.remove() }
        let fresh = freshStore.store
        var c = r
        c.target = vname("vm3")
        do {
            _ = try Filler.run(c, store: fresh)
            Issue.record("a corrupted block was accepted")
        } catch let e as StoreError {
            #expect(e.code == .corrupt && e.description.contains("block 4"))
        }
        #expect(try fresh.list().isEmpty)
    }

    @Test(arguments: TestBackend.persistent)
    func snapshotsAreClonedUnlessACopyIsAsked(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("snap", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw", blocks: 2, tail: 0)
        let store = t.store
        _ = try Filler.run(FillRequest(target: vname("base"), source: .file(dir + "/img.raw")), store: store)
        try store.snapshot(vname("base"), as: vname("base-s"))
        guard case .cloned = try Filler.run(FillRequest(target: vname("c1"), source: .snapshot(vname("base-s"))), store: store) else {
            Issue.record("snapshot was not cloned"); return
        }
        #expect(try store.info(vname("c1")).parent == "base-s")
        var copy = FillRequest(target: vname("c2"), source: .snapshot(vname("base-s")))
        copy.copy = true
        guard case .filled(let r) = try Filler.run(copy, store: store) else { Issue.record("not copied"); return }
        #expect(r.written == 0)   // same bytes: all blocks already in the store
        #expect(try store.info(vname("c2")).parent == nil)
        #expect(try readAll(store, "c2") == image && (try readAll(store, "c1")) == image)
        guard case .cloned(let via) = try Filler.run(FillRequest(target: vname("c3"), source: .volume(vname("base"))), store: store) else {
            Issue.record("volume was not cloned"); return
        }
        #expect(try readAll(store, "c3") == image)
        #expect(via.value.hasPrefix("base.origin-of-c3"))
    }
}

/// A source that fails after `failAfter` reads and counts every block it reads.
final class FlakySource: BlockSource, @unchecked Sendable {
    let inner: FileSource
    let reads = Locked<[Int: Int]>([:])
    var failAfter: Int
    init(_ inner: FileSource, failAfter: Int) { self.inner = inner; self.failAfter = failAfter }
    var description: String { "flaky(\(inner.description))" }
    var size: UInt64 { inner.size }
    var blockSize: Int { inner.blockSize }
    func expectedHash(_ index: Int) -> ContentHash? { nil }
    func read(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = reads.withLock { r -> Int in r[index, default: 0] += 1; return r.values.reduce(0, +) }
        if count > failAfter { throw StoreError(.io, "connection reset (simulated) at block \(index)") }
        return try inner.read(index, into: buffer)
    }
}

@Suite struct FillResume {
    @Test(arguments: TestBackend.persistent)
    func resumeFetchesNoVerifiedBlockTwice(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("resume", backend)
        defer { cleanUp(dir, t) }
        let image = makeImage(dir + "/img.raw", blocks: 12, tail: 4096)
        let store = t.store
        let source = FlakySource(try FileSource(path: dir + "/img.raw", blockSize: 4 << 20), failAfter: 5)
        let id = "test-source"
        let stage = try FillStage.begin(store: store, target: vname("v"), imageSize: source.size, blockSize: 4 << 20, sourceID: id, resume: false)
        #expect(throws: StoreError.self) { try Copier.fill(from: source, into: stage, options: FillOptions(jobs: 1)) }
        #expect(try store.list().isEmpty)   // nothing visible
        #expect(throws: StoreError.self) {    // a second fill without --resume is refused
            try FillStage.begin(store: store, target: vname("v"), imageSize: source.size, blockSize: 4 << 20, sourceID: id, resume: false)
        }
        source.failAfter = Int.max
        let again = try FillStage.begin(store: store, target: vname("v"), imageSize: source.size, blockSize: 4 << 20, sourceID: id, resume: true)
        #expect(again.done.count == 5)
        let result = try Copier.fill(from: source, into: again, options: FillOptions(jobs: 3))
        try again.commit(volumeSize: (source.size + 511) / 512 * 512)
        #expect(result.progress.resumed == 5 && result.progress.fetched == 8)
        let twice = source.reads.withLock { r in r.filter { $0.value > 1 && $0.key < 5 } }
        #expect(twice.isEmpty, "verified blocks fetched again: \(twice)")
        #expect(Array(try readAll(store, "v")[0..<image.count]) == image)
        #expect(try store.objects.exists(ObjectName("fills", "v")) == false)
        // Blocks of an interrupted fill survive gc until it resumes.
        #expect(try store.verify(vname("v")).ok)
    }

    @Test(arguments: TestBackend.persistent)
    func checkpointedBlocksSurviveGC(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("gcfill", backend)
        defer { cleanUp(dir, t) }
        _ = makeImage(dir + "/img.raw", blocks: 4, tail: 0)
        let store = t.store
        let source = FlakySource(try FileSource(path: dir + "/img.raw", blockSize: 4 << 20), failAfter: 3)
        let stage = try FillStage.begin(store: store, target: vname("v"), imageSize: source.size, blockSize: 4 << 20, sourceID: "s", resume: false)
        #expect(throws: StoreError.self) { try Copier.fill(from: source, into: stage, options: FillOptions(jobs: 1)) }
        let kept = try contentObjects(t)
        #expect(kept == 2)   // blocks 0 and 1; block 2 is all zero and stores nothing
        _ = try store.gc(apply: true, grace: 0)
        #expect(try contentObjects(t) == kept)
        #expect(try FillStage.abort(store: store, target: vname("v")))
        _ = try store.gc(apply: true, grace: 0)
        #expect(try contentObjects(t) == 0)
    }
}

import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

#if canImport(Glibc)
import Glibc
#endif

/// Every read checks what it returns (issue 15): damaged content blocks and
/// owned blocks are errors naming volume, block and object, never zeros or
/// wrong bytes; `verify` names them. Runs on every backend.
@Suite struct CheckedReads {
    static let bs = 4 << 20
    static let table = bs / 1024

    /// Bytes that differ per position, so misplaced or zeroed data shows.
    static func data(_ count: Int, seed: Int = 1) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7 &+ ($0 >> 11) &+ ($0 >> 22) &* 101) }
    }

    /// A 16 MiB volume "v" with data in blocks 0-2, snapshot "s" hashed into
    /// content blocks, and its clone "c".
    static func cloneOfHashedSnapshot(_ store: VolumeStore) throws {
        try store.create(name("v"), size: .mebibytes(16))
        try store.withVolume(name("v")) { try $0.write(at: 0, data(3 * bs)) }
        try store.snapshot(name("v"), as: name("s"))
        _ = try store.hash(name("s"))
        try store.clone(name("s"), as: name("c"))
    }

    static func layer(_ store: VolumeStore, _ volume: String) throws -> LayerID {
        try #require(LayerID(hex: try store.info(name(volume)).layer))
    }

    static func contentObject(_ store: VolumeStore, _ snapshot: String, block: UInt32) throws -> ObjectName {
        let map = try store.loadMap(try layer(store, snapshot))
        guard case .content(let h)? = map.entry(block) else {
            throw StoreError(.invalidArgument, "block \(block) of \(snapshot) is not a content block")
        }
        return StoreLayout.content(h)
    }

    static func ownedObject(_ store: VolumeStore, _ volume: String, block: UInt32) throws -> ObjectName {
        StoreLayout.owned(try layer(store, volume), block)
    }

    /// Replaces an object's bytes from outside, as damage on the disk would.
    static func replace(_ t: TestStore, _ obj: ObjectName, with bytes: [UInt8]) throws {
        let outside = try t.outsideObjects()
        try outside.put(obj, bytes, durable: true)
    }

    /// Flips one byte of an object in place from outside.
    static func flip(_ t: TestStore, _ obj: ObjectName, at offset: UInt64) throws {
        let outside = try t.outsideObjects()
        var b: [UInt8] = [0]
        _ = try b.withUnsafeMutableBytes { try outside.read(obj, at: offset, into: $0) }
        b[0] ^= 0x5A
        try b.withUnsafeBytes { try outside.write(obj, at: offset, $0) }
        try outside.syncContents(obj)
    }

    /// Expects `body` to fail with a `.corrupt` error naming the block and object.
    static func expectCorrupt(_ what: String, block: UInt32, object: ObjectName,
                              sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what): damaged bytes were returned", sourceLocation: sourceLocation)
        } catch let e as StoreError {
            #expect(e.code == .corrupt, "\(what): \(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains("block \(block)"), "\(what): \(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains(object.path), "\(what): \(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(what): \(error)", sourceLocation: sourceLocation)
        }
    }

    static func exportToDevNull(_ v: Volume) throws {
        let fd = open("/dev/null", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.io, "open /dev/null") }
        defer { close(fd) }
        try RawCopy.exportVolume(v, to: fd)
    }

    // MARK: content blocks

    @Test(arguments: TestBackend.persistent)
    func emptiedContentBlockIsAnErrorNotZeros(_ backend: TestBackend) throws {
        let t = try backend.store("emptied")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let obj = try CheckedReads.contentObject(t.store, "s", block: 2)
        try CheckedReads.replace(t, obj, with: [])
        // Another node: nothing checked or cached before the damage.
        let store = try t.node("reader")
        let v = try store.open(name("c"), mode: .readOnly)
        CheckedReads.expectCorrupt("read", block: 2, object: obj) { _ = try v.read(at: 8 << 20, length: 4 << 20) }
        CheckedReads.expectCorrupt("small read", block: 2, object: obj) { _ = try v.read(at: (8 << 20) + 4096, length: 512) }
        CheckedReads.expectCorrupt("export", block: 2, object: obj) { try CheckedReads.exportToDevNull(v) }
        // The other blocks still read.
        #expect(try v.read(at: 4 << 20, length: 4096) == Array(CheckedReads.data(3 * CheckedReads.bs)[(4 << 20)..<((4 << 20) + 4096)]))
        let r = try store.verify(name("c"))
        #expect(r.problems.map(\.block) == [2])
    }

    @Test(arguments: TestBackend.persistent)
    func truncatedContentBlockIsAnError(_ backend: TestBackend) throws {
        let t = try backend.store("truncated")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let obj = try CheckedReads.contentObject(t.store, "s", block: 1)
        let whole = try t.outsideObjects().readAll(obj)
        try CheckedReads.replace(t, obj, with: Array(whole[0..<(whole.count / 2)]))
        let v = try t.node("reader").open(name("c"), mode: .readOnly)
        // Even a read of the part that is still there: the block is not whole.
        CheckedReads.expectCorrupt("read", block: 1, object: obj) { _ = try v.read(at: 4 << 20, length: 4096) }
        CheckedReads.expectCorrupt("read of the cut part", block: 1, object: obj) { _ = try v.read(at: (8 << 20) - 4096, length: 4096) }
    }

    /// Checked once, a content block's length is still checked on every read.
    @Test(arguments: TestBackend.persistent)
    func contentBlockCutAfterItWasCheckedIsAnError(_ backend: TestBackend) throws {
        let t = try backend.store("cut-later")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let obj = try CheckedReads.contentObject(t.store, "s", block: 0)
        let v = try t.store.open(name("c"), mode: .readOnly)
        #expect(try v.read(at: 0, length: 8192) == Array(CheckedReads.data(8192)))
        if backend == .dir {
            // In place, as `: > FILE` does: the reader's open descriptor sees it.
            #expect(truncate(t.location + "/" + obj.path, 0) == 0)
        } else {
            try CheckedReads.replace(t, obj, with: [])
        }
        CheckedReads.expectCorrupt("read after the cut", block: 0, object: obj) { _ = try v.read(at: 1 << 20, length: 4096) }
    }

    /// A long-running reader (the node daemon: one store kept open) checked a
    /// content block whole once; a byte flipped in place afterwards, keeping
    /// the length, is found by its next read (the file's version changed),
    /// copying or zero-copy, not when the check leaves the cache.
    @Test func contentBlockFlippedInPlaceAfterItWasCheckedIsAnError() throws {
        let t = try TestBackend.dir.store("flip-later")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let obj = try CheckedReads.contentObject(t.store, "s", block: 1)
        let v = try t.store.open(name("c"), mode: .readOnly)
        let expected = Array(CheckedReads.data(3 * CheckedReads.bs)[(4 << 20)..<((4 << 20) + 65536)])
        #expect(try v.read(at: 4 << 20, length: 65536) == expected)
        #expect(try v.readPieces(at: 4 << 20, length: 65536) != nil, "checked once: handed out without copying")
        // In place, as a failing disk or a stray write would: same inode, same length.
        try CheckedReads.flip(t, obj, at: 1000)
        CheckedReads.expectCorrupt("read after the flip", block: 1, object: obj) { _ = try v.read(at: (4 << 20) + 65536, length: 4096) }
        CheckedReads.expectCorrupt("zero-copy read after the flip", block: 1, object: obj) {
            // nil sends the caller to `read`, which checks.
            if try v.readPieces(at: 4 << 20, length: 65536) == nil { _ = try v.read(at: 4 << 20, length: 65536) }
        }
    }

    /// The zero-copy path hands out owned pages it checked before without
    /// reading them again (CheckedPages); a byte flipped in place since is
    /// still never handed out.
    @Test func ownedPagesCheckedBeforeAreCheckedAgainAfterAChange() throws {
        let t = try TestBackend.dir.store("flip-owned-later")
        defer { t.remove() }
        try t.store.create(name("w"), size: .mebibytes(8))
        let written = CheckedReads.data(8 << 20)
        try t.store.withVolume(name("w")) { try $0.write(at: 0, written) }
        let obj = try CheckedReads.ownedObject(t.store, "w", block: 1)
        let v = try t.store.open(name("w"), mode: .readOnly)
        for _ in 0..<2 {
            #expect(try v.readPieces(at: 4 << 20, length: 1 << 20) != nil)
        }
        try CheckedReads.flip(t, obj, at: 5000)
        CheckedReads.expectCorrupt("zero-copy read after the flip", block: 1, object: obj) {
            if try v.readPieces(at: 4 << 20, length: 1 << 20) == nil { _ = try v.read(at: 4 << 20, length: 1 << 20) }
        }
        // The rest of the block still goes out.
        #expect(try v.readPieces(at: (4 << 20) + 65536, length: 1 << 20) != nil)
    }

    /// A write into part of a page recomputes that page's CRC over the bytes
    /// it does not cover too: it must check them first, or damage there
    /// would get a matching CRC and be read back as good data ever after.
    @Test(arguments: TestBackend.persistent)
    func aWriteIntoPartOfADamagedPageIsRefusedNotHidden(_ backend: TestBackend) throws {
        let t = try backend.store("edge-page")
        defer { t.remove() }
        try t.store.create(name("w"), size: .mebibytes(8))
        try t.store.withVolume(name("w")) { try $0.write(at: 0, CheckedReads.data(8 << 20)) }
        let obj = try CheckedReads.ownedObject(t.store, "w", block: 1)
        try CheckedReads.flip(t, obj, at: 4096 + 3000)
        let v = try t.store.open(name("w"))
        defer { try? v.close() }
        // 512 bytes into page 1, away from the flipped byte; then a write
        // ending inside it; both refused, one line naming block and object.
        CheckedReads.expectCorrupt("write of 512 bytes into the damaged page", block: 1, object: obj) {
            try v.write(at: UInt64((4 << 20) + 4096 + 512), [UInt8](repeating: 7, count: 512))
        }
        CheckedReads.expectCorrupt("write ending inside the damaged page", block: 1, object: obj) {
            try v.write(at: UInt64(4 << 20), [UInt8](repeating: 7, count: 4096 + 100))
        }
        // The damage is still seen, not laundered by a recomputed CRC.
        CheckedReads.expectCorrupt("read of the damaged page", block: 1, object: obj) {
            _ = try v.read(at: UInt64((4 << 20) + 4096), length: 4096)
        }
        // Whole pages may be written over it (nothing of the old page is kept),
        // and partial writes into undamaged pages go through as before.
        try v.write(at: UInt64((4 << 20) + 4096), [UInt8](repeating: 9, count: 4096))
        try v.write(at: UInt64((4 << 20) + 4096 + 100), [UInt8](repeating: 8, count: 50))
        var want = [UInt8](repeating: 9, count: 4096)
        for i in 100..<150 { want[i] = 8 }
        #expect(try v.read(at: UInt64((4 << 20) + 4096), length: 4096) == want)
        try v.flush()
        #expect(try t.store.verify(name("w")).problems.isEmpty)
    }

    /// Pages this volume wrote count as checked in the file's version after
    /// the write (their CRCs come from the bytes written): the first
    /// zero-copy read of them needs no read-back. A change by anyone else
    /// between two of its writes drops the earlier marks: damage made there
    /// is still never handed out.
    @Test func pagesThisVolumeWroteAreMarkedButNotAcrossAnotherChange() throws {
        let t = try TestBackend.dir.store("marks-on-write")
        defer { t.remove() }
        try t.store.create(name("w"), size: .mebibytes(8))
        let v = try t.store.open(name("w"))
        defer { try? v.close() }
        try v.write(at: UInt64(4 << 20), CheckedReads.data(4 << 20))
        try v.write(at: UInt64(4 << 20), CheckedReads.data(1 << 20, seed: 5))
        let hits = v.checkedPages.coveredReads
        #expect(try v.readPieces(at: UInt64(4 << 20), length: 1 << 20) != nil)
        #expect(v.checkedPages.coveredReads == hits + 1, "the first read of pages just written read them back")
        // Someone else flips a byte in page 40; then the volume writes pages 0-15.
        let obj = try CheckedReads.ownedObject(t.store, "w", block: 1)
        try CheckedReads.flip(t, obj, at: 40 * 4096 + 7)
        try v.write(at: UInt64(4 << 20), [UInt8](repeating: 1, count: 65536))
        // The pages it wrote go out from their marks...
        let before = v.checkedPages.coveredReads
        #expect(try v.readPieces(at: UInt64(4 << 20), length: 65536) != nil)
        #expect(v.checkedPages.coveredReads == before + 1)
        // ...the ones marked before the other change do not.
        CheckedReads.expectCorrupt("zero-copy read over the page changed by someone else", block: 1, object: obj) {
            if try v.readPieces(at: UInt64((4 << 20) + 32 * 4096), length: 65536) == nil {
                _ = try v.read(at: UInt64((4 << 20) + 32 * 4096), length: 65536)
            }
        }
        #expect(v.checkedPages.coveredReads == before + 1)
    }

    /// `readCached` (NBD's small reads answered on the reader's thread) reads
    /// into the reply and checks the bytes there: what it returns is what
    /// `read` returns, and a page changed in place since it was checked is
    /// never returned (false sends the caller to `read`, which names it).
    @Test func readCachedReturnsOnlyCheckedBytes() throws {
        let t = try TestBackend.dir.store("read-cached")
        defer { t.remove() }
        let bs = CheckedReads.bs
        try t.store.create(name("w"), size: .mebibytes(8))
        let written = CheckedReads.data(8 << 20, seed: 3)
        try t.store.withVolume(name("w")) { try $0.write(at: 0, written) }
        let obj = try CheckedReads.ownedObject(t.store, "w", block: 1)
        let v = try t.store.open(name("w"), mode: .readOnly)
        func cached(_ offset: Int, _ length: Int) throws -> [UInt8]? {
            var buf = [UInt8](repeating: 0xEE, count: length)
            let ok = try buf.withUnsafeMutableBytes { try v.readCached(at: UInt64(offset), into: $0) }
            return ok ? buf : nil
        }
        // Whole pages, unaligned, a few bytes, across pages and across blocks.
        for (offset, length) in [(bs + 8192, 4096), (bs + 8192 + 512, 4096), (bs + 100, 3), (bs - 8192, 16384), (0, 65536)] {
            // Just written: in the page cache, so answered.
            #expect(try cached(offset, length) == Array(written[offset..<(offset + length)]), "\(offset)+\(length)")
        }
        // One byte of page 2 of block 1 changed in place, behind the volume's back.
        try CheckedReads.flip(t, obj, at: 2 * 4096 + 17)
        #expect(try cached(bs + 8192, 4096) == nil, "the damaged page is not returned")
        #expect(try cached(bs + 8192 + 512, 4096) == nil, "nor any read touching it")
        CheckedReads.expectCorrupt("read of the damaged page", block: 1, object: obj) { _ = try v.read(at: UInt64(bs + 8192), length: 4096) }
        #expect(try cached(bs + 4096, 4096) == Array(written[(bs + 4096)..<(bs + 8192)]), "the pages around it still go out")
    }

    /// `readCached` on content blocks: only once checked whole, and not after a change.
    @Test func readCachedReturnsOnlyCheckedContentBlocks() throws {
        let t = try TestBackend.dir.store("read-cached-content")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let written = CheckedReads.data(3 * CheckedReads.bs)
        let content = try CheckedReads.contentObject(t.store, "s", block: 0)
        let c = try t.node("reader").open(name("c"), mode: .readOnly)
        func cachedC(_ offset: Int, _ length: Int) throws -> [UInt8]? {
            var buf = [UInt8](repeating: 0xEE, count: length)
            let ok = try buf.withUnsafeMutableBytes { try c.readCached(at: UInt64(offset), into: $0) }
            return ok ? buf : nil
        }
        #expect(try cachedC(4096, 4096) == nil, "not checked yet: the copying read checks it whole")
        #expect(try c.read(at: 4096, length: 4096) == Array(written[4096..<8192]))
        #expect(try cachedC(12288, 4096) == Array(written[12288..<16384]))
        try CheckedReads.flip(t, content, at: 20000)
        CheckedReads.expectCorrupt("content block changed after its check", block: 0, object: content) {
            if try cachedC(16384, 4096) == nil { _ = try c.read(at: 16384, length: 4096) }
        }
    }

    @Test(arguments: TestBackend.persistent)
    func flippedByteInContentBlockFailsReadsCopiesAndVerify(_ backend: TestBackend) throws {
        let t = try backend.store("flip-content")
        defer { t.remove() }
        try CheckedReads.cloneOfHashedSnapshot(t.store)
        let obj = try CheckedReads.contentObject(t.store, "s", block: 1)
        try CheckedReads.flip(t, obj, at: 1000)
        let store = try t.node("reader")
        let v = try store.open(name("c"), mode: .readOnly)
        CheckedReads.expectCorrupt("whole-block read", block: 1, object: obj) { _ = try v.read(at: 4 << 20, length: 4 << 20) }
        CheckedReads.expectCorrupt("small read elsewhere in the block", block: 1, object: obj) {
            _ = try v.read(at: (4 << 20) + 65536, length: 4096)
        }
        // Copy-up of the damaged block into the clone fails; nothing is acknowledged.
        let w = try store.open(name("c"))
        CheckedReads.expectCorrupt("copy-up", block: 1, object: obj) { try w.write(at: (4 << 20) + 8192, [1, 2, 3]) }
        try w.close()
        let r = try store.verify(name("c"))
        #expect(r.problems.map(\.block) == [1])
        #expect(r.problems.first?.object == obj.path)
    }

    // MARK: owned blocks

    @Test(arguments: TestBackend.persistent)
    func ownedBlocksCarryChecksumsThatFollowEveryWrite(_ backend: TestBackend) throws {
        let t = try backend.store("owned-table")
        defer { t.remove() }
        let store = t.store
        try store.create(name("o"), size: .mebibytes(12))
        var model = [UInt8](repeating: 0, count: 12 << 20)
        func write(_ v: Volume, _ offset: Int, _ bytes: [UInt8]) throws {
            try v.write(at: UInt64(offset), bytes)
            model.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        }
        try store.withVolume(name("o")) { v in
            try write(v, 0, CheckedReads.data(CheckedReads.bs))           // whole block
            try write(v, (4 << 20) + 100, CheckedReads.data(5000, seed: 2)) // copy-on-write from zeros, unaligned
            try v.flush()
            try write(v, 4097, CheckedReads.data(3, seed: 3))               // in place, inside one page
            try write(v, (4 << 20) + 8190, CheckedReads.data(9000, seed: 4)) // in place, across pages
            try v.zero(at: 8 << 20, length: 4 << 20)
            try write(v, (8 << 20) + 12288, CheckedReads.data(4096, seed: 5)) // after a whole-block zero
        }
        for b: UInt32 in 0...2 {
            let obj = try CheckedReads.ownedObject(store, "o", block: b)
            #expect(try t.outsideObjects().stat(obj)?.size == UInt64(CheckedReads.bs + CheckedReads.table), "block \(b)")
        }
        let v = try t.node("reader").open(name("o"), mode: .readOnly)
        for (offset, length) in [(0, 12 << 20), (4096, 4096), (4000, 200), ((4 << 20) + 8000, 10000), ((8 << 20) + 12000, 5000)] {
            #expect(try v.read(at: UInt64(offset), length: length) == Array(model[offset..<(offset + length)]), "\(offset)+\(length)")
        }
        #expect(try store.verify(name("o")).ok)
    }

    @Test(arguments: TestBackend.persistent)
    func flippedByteInOwnedBlockFailsThatPageAndVerify(_ backend: TestBackend) throws {
        let t = try backend.store("flip-owned")
        defer { t.remove() }
        let store = t.store
        try store.create(name("w"), size: .mebibytes(8))
        let written = CheckedReads.data(8 << 20)
        try store.withVolume(name("w")) { try $0.write(at: 0, written) }
        let obj = try CheckedReads.ownedObject(store, "w", block: 1)
        try CheckedReads.flip(t, obj, at: 5000)   // page 1 of block 1
        let reader = try t.node("reader")
        let v = try reader.open(name("w"), mode: .readOnly)
        CheckedReads.expectCorrupt("4 KiB read of the page", block: 1, object: obj) { _ = try v.read(at: (4 << 20) + 4096, length: 4096) }
        CheckedReads.expectCorrupt("one byte of the page", block: 1, object: obj) { _ = try v.read(at: (4 << 20) + 6000, length: 1) }
        CheckedReads.expectCorrupt("whole block", block: 1, object: obj) { _ = try v.read(at: 4 << 20, length: 4 << 20) }
        // Other pages of the block and other blocks read.
        #expect(try v.read(at: (4 << 20) + 8192, length: 4096) == Array(written[((4 << 20) + 8192)..<((4 << 20) + 12288)]))
        #expect(try v.read(at: 0, length: 4096) == Array(written[0..<4096]))
        // A snapshot of it cannot be copied out whole.
        try reader.snapshot(name("w"), as: name("ws"))
        let s = try reader.open(name("ws"), mode: .readOnly)
        CheckedReads.expectCorrupt("export of the snapshot", block: 1, object: obj) { try CheckedReads.exportToDevNull(s) }
        let r = try reader.verify(name("w"))
        #expect(r.problems.map(\.block) == [1])
    }

    /// Damage to the checksum table itself is damage too.
    @Test(arguments: TestBackend.persistent)
    func damagedChecksumTableIsReported(_ backend: TestBackend) throws {
        let t = try backend.store("flip-table")
        defer { t.remove() }
        let store = t.store
        try store.create(name("w"), size: .mebibytes(4))
        try store.withVolume(name("w")) { try $0.write(at: 0, CheckedReads.data(4 << 20)) }
        let obj = try CheckedReads.ownedObject(store, "w", block: 0)
        try CheckedReads.flip(t, obj, at: UInt64(CheckedReads.bs + 4 * 7))   // page 7's checksum
        let v = try t.node("reader").open(name("w"), mode: .readOnly)
        CheckedReads.expectCorrupt("read of page 7", block: 0, object: obj) { _ = try v.read(at: 7 * 4096, length: 4096) }
        let r = try store.verify(name("w"))
        #expect(r.problems.count == 1)
        #expect(r.problems.first?.problem.contains("page 7") == true)
    }

    @Test(arguments: TestBackend.persistent)
    func copyUpOfDamagedParentBlockFails(_ backend: TestBackend) throws {
        let t = try backend.store("copy-up")
        defer { t.remove() }
        let store = t.store
        try store.create(name("p"), size: .mebibytes(8))
        try store.withVolume(name("p")) { try $0.write(at: 0, CheckedReads.data(8 << 20)) }
        try store.snapshot(name("p"), as: name("ps"))
        try store.clone(name("ps"), as: name("k"))
        let obj = try CheckedReads.ownedObject(store, "ps", block: 1)
        try CheckedReads.flip(t, obj, at: 300_000)
        let k = try t.node("writer").open(name("k"))
        // A partial write must copy the parent's block up: its damage stops it.
        CheckedReads.expectCorrupt("copy-up", block: 1, object: obj) { try k.write(at: (4 << 20) + 4096, [9, 9, 9, 9]) }
        try k.close()
        #expect(try t.count(prefix: "layers/\(try CheckedReads.layer(store, "k").hex)/") == 1, "no owned object was made")
    }

    /// A writer that stopped between a page and its checksum (a crash) left
    /// the block unsettled: readers before the next writable open read it as
    /// before checksums (no false EIO); settled blocks stay checked.
    @Test(arguments: TestBackend.persistent)
    func blocksAWriterLeftMidWriteAreReadUntilSettled(_ backend: TestBackend) throws {
        let t = try backend.store("unsettled")
        defer { t.remove() }
        let store = t.store
        // Blocks 0 and 16: intents are logged for groups of 16 blocks, so these
        // are in different groups.
        try store.create(name("u"), size: .mebibytes(68))
        try store.withVolume(name("u")) { v in
            try v.write(at: 0, CheckedReads.data(4 << 20))
            try v.write(at: 64 << 20, CheckedReads.data(4 << 20, seed: 2))
        }
        // A writer changes block 0 in place (its intent is logged) and "dies":
        // never flushed nor closed, and a page of it differs from its checksum.
        let w = try t.node("writer").open(name("u"))
        try w.write(at: 100, [1, 2, 3])
        let obj0 = try CheckedReads.ownedObject(store, "u", block: 0)
        try CheckedReads.flip(t, obj0, at: 5000)
        let obj16 = try CheckedReads.ownedObject(store, "u", block: 16)
        try CheckedReads.flip(t, obj16, at: 5000)
        let r = try t.node("reader").open(name("u"), mode: .readOnly)
        #expect(try r.read(at: 4096, length: 4096).count == 4096)
        CheckedReads.expectCorrupt("settled block", block: 16, object: obj16) { _ = try r.read(at: (64 << 20) + 4096, length: 4096) }
        _ = w
    }

    /// Owned objects written before the checksums (format 1.0: the block
    /// alone) still read, are checked whole against the map, and get their
    /// checksums with the first write in place.
    @Test(arguments: TestBackend.persistent)
    func ownedObjectsWithoutChecksumsAreCheckedWhole(_ backend: TestBackend) throws {
        let t = try backend.store("old-owned")
        defer { t.remove() }
        let store = t.store
        try store.create(name("old"), size: .mebibytes(8))
        let written = CheckedReads.data(8 << 20)
        try store.withVolume(name("old")) { try $0.write(at: 0, written) }
        // As an older archip left them: no table.
        for b: UInt32 in 0...1 {
            let obj = try CheckedReads.ownedObject(store, "old", block: b)
            let bytes = try t.outsideObjects().readAll(obj)
            try CheckedReads.replace(t, obj, with: Array(bytes[0..<CheckedReads.bs]))
        }
        #expect(try t.node("r1").verify(name("old")).ok)
        #expect(try t.node("r2").open(name("old"), mode: .readOnly).read(at: 0, length: 8 << 20) == written)
        // Damage in one is found by the whole-block check.
        let obj1 = try CheckedReads.ownedObject(store, "old", block: 1)
        try CheckedReads.flip(t, obj1, at: 123_456)
        let v = try t.node("r3").open(name("old"), mode: .readOnly)
        CheckedReads.expectCorrupt("read of an old damaged object", block: 1, object: obj1) { _ = try v.read(at: (8 << 20) - 4096, length: 4096) }
        // A write in place to the healthy one gives it its table.
        let obj0 = try CheckedReads.ownedObject(store, "old", block: 0)
        let w = try t.node("w").open(name("old"))
        try w.write(at: 10, [7, 7, 7])
        try w.close()
        #expect(try t.outsideObjects().stat(obj0)?.size == UInt64(CheckedReads.bs + CheckedReads.table))
        var expected = Array(written[0..<8192])
        expected.replaceSubrange(10..<13, with: [7, 7, 7])
        #expect(try t.node("r4").open(name("old"), mode: .readOnly).read(at: 0, length: 8192) == expected)
    }
}

@Suite struct CRC32CValues {
    /// The standard check value, and the three-stream path (long inputs)
    /// against a continuation split anywhere.
    @Test func knownValuesAndContinuation() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
        #expect([UInt8](repeating: 0, count: 32).withUnsafeBytes { CRC32C.checksum($0) } == 0x8A91_36AA)
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        data.withUnsafeBytes { d in
            let whole = CRC32C.checksum(d)
            for split in [1, 255, 4096, 24_576, 77_777] {
                let a = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: d[0..<split]))
                #expect(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: d[split...]), continuing: a) == whole, "split at \(split)")
            }
        }
    }
}

import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// The hash a flush records for a block written in pieces must be the block
/// hash of what the object holds, whatever the order of the pieces.
@Suite struct PartialBlockHashes {
    static let blockSize = 256 << 10

    /// Applies `pieces` to a block that starts as `base`, the way the volume
    /// does (object written, then the hash told), and compares.
    func check(base: [UInt8]?, pieces: [(Int, [UInt8])], _ what: Comment) {
        var block = base ?? [UInt8](repeating: 0, count: Self.blockSize)
        let partial = PartialBlockHash(knownZeroFrom: base == nil ? 0 : Self.blockSize)
        for (offset, data) in pieces {
            block.replaceSubrange(offset..<(offset + data.count), with: data)
            data.withUnsafeBytes { partial.wrote(at: offset, $0) }
        }
        var reads = 0
        var scratch = [UInt8](repeating: 0, count: 48 << 10)   // smaller than a block: reads in chunks
        let got = scratch.withUnsafeMutableBytes { buf in
            partial.finish(buffer: buf) { offset, chunk in
                reads += chunk.count
                chunk.copyMemory(from: UnsafeRawBufferPointer(rebasing: block.withUnsafeBytes { $0 }[offset..<(offset + chunk.count)]))
            }
        }
        #expect(got == SHA256.blockHash(block), what)
    }

    func bytes(_ n: Int, _ rng: inout SplitMix, zeroTail: Int = 0) -> [UInt8] {
        var out = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next() | 1) }
        for i in max(0, n - zeroTail)..<n { out[i] = 0 }
        return out
    }

    @Test func inOrderPiecesNeedNoReadBack() {
        var rng = SplitMix(7)
        let q = Self.blockSize / 4
        let partial = PartialBlockHash(knownZeroFrom: 0)
        var block = [UInt8]()
        for i in 0..<4 {
            let piece = bytes(q, &rng)
            block += piece
            piece.withUnsafeBytes { partial.wrote(at: i * q, $0) }
        }
        var scratch = [UInt8](repeating: 0, count: 4096)
        var readBack = 0
        let h = scratch.withUnsafeMutableBytes { buf in partial.finish(buffer: buf) { _, c in readBack += c.count } }
        #expect(readBack == 0)
        #expect(h == SHA256.blockHash(block))
    }

    @Test func fixedCases() {
        var rng = SplitMix(11)
        let q = Self.blockSize / 4
        let parent = bytes(Self.blockSize, &rng)
        check(base: nil, pieces: [(0, bytes(q, &rng))], "first quarter of a zero block")
        check(base: nil, pieces: [(q, bytes(q, &rng))], "second quarter only")
        check(base: nil, pieces: [(q, bytes(q, &rng)), (0, bytes(q, &rng))], "out of order")
        check(base: nil, pieces: [(0, bytes(q, &rng, zeroTail: 100)), (q, [UInt8](repeating: 0, count: q))], "trailing zeros held back")
        check(base: nil, pieces: [(0, bytes(q, &rng, zeroTail: 100)), (q, [UInt8](repeating: 0, count: q)), (2 * q, bytes(10, &rng))],
              "held zeros followed by data")
        check(base: nil, pieces: [(0, [UInt8](repeating: 0, count: q))], "only zeros")
        check(base: nil, pieces: [(0, bytes(q, &rng)), (100, bytes(50, &rng))], "a rewrite of hashed bytes")
        check(base: parent, pieces: [(0, bytes(q, &rng))], "over a parent's block")
        check(base: parent, pieces: [(0, bytes(q, &rng)), (q, bytes(q, &rng)), (2 * q, bytes(q, &rng)), (3 * q, bytes(q, &rng))],
              "a parent's block rewritten whole in pieces")
    }

    /// A flush that fails after hashing runs again: the same answer, and
    /// writes after it start over from the object.
    @Test func finishingTwiceAndWritingAfter() {
        var rng = SplitMix(5)
        var block = [UInt8](repeating: 0, count: Self.blockSize)
        let partial = PartialBlockHash(knownZeroFrom: 0)
        let a = bytes(1000, &rng)
        block.replaceSubrange(0..<1000, with: a)
        a.withUnsafeBytes { partial.wrote(at: 0, $0) }
        var scratch = [UInt8](repeating: 0, count: 4096)
        func finish() -> ContentHash {
            scratch.withUnsafeMutableBytes { buf in
                partial.finish(buffer: buf) { offset, chunk in
                    chunk.copyMemory(from: UnsafeRawBufferPointer(rebasing: block.withUnsafeBytes { $0 }[offset..<(offset + chunk.count)]))
                }
            }
        }
        #expect(finish() == SHA256.blockHash(block))
        #expect(finish() == SHA256.blockHash(block))
        let b = bytes(500, &rng)
        block.replaceSubrange(1000..<1500, with: b)
        b.withUnsafeBytes { partial.wrote(at: 1000, $0) }
        #expect(finish() == SHA256.blockHash(block))
    }

    @Test(arguments: [1 as UInt64, 2, 3, 4, 5, 6, 7, 8])
    func randomPieces(seed: UInt64) {
        var rng = SplitMix(seed)
        for round in 0..<40 {
            var pieces: [(Int, [UInt8])] = []
            var at = 0
            for _ in 0..<(1 + rng.below(12)) {
                // Mostly streaming, sometimes a jump or a rewrite.
                let len = 1 + rng.below(Self.blockSize / 6)
                switch rng.below(10) {
                case 0: at = rng.below(Self.blockSize)
                case 1: at = max(0, at - rng.below(at + 1))
                default: break
                }
                let off = min(at, Self.blockSize - len)
                pieces.append((off, bytes(len, &rng, zeroTail: rng.below(4) == 0 ? rng.below(len + 1) : 0)))
                at = off + len
            }
            let base: [UInt8]? = rng.below(3) == 0 ? bytes(Self.blockSize, &rng, zeroTail: rng.below(1000)) : nil
            check(base: base, pieces: pieces, "seed \(seed) round \(round)")
        }
    }
}

/// Through a volume: blocks written in pieces (in order, out of order, over a
/// parent, rewritten) flush checksums that `verify` accepts, on every backend.
@Suite struct PiecewiseWritesVerify {
    @Test(arguments: TestBackend.allCases)
    func piecesInAnyOrderVerifyClean(_ backend: TestBackend) throws {
        let t = try backend.store("pieces")
        defer { t.remove() }
        let store = t.store
        let bs = 256 << 10
        let q = bs / 4
        var rng = SplitMix(3)
        func piece(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next() | 1) } }
        let v = try VolumeName("p")
        try store.create(v, size: ByteCount(UInt64(8 * bs)), blockSize: UInt32(bs))
        var want = [UInt8](repeating: 0, count: 8 * bs)
        func write(_ vol: Volume, _ off: Int, _ data: [UInt8]) throws {
            try vol.write(at: UInt64(off), data)
            want.replaceSubrange(off..<(off + data.count), with: data)
        }
        try store.withVolume(v) { vol in
            for i in 0..<4 { try write(vol, i * q, piece(q)) }                    // block 0: streaming
            for i in [3, 1, 0, 2] { try write(vol, bs + i * q, piece(q)) }        // block 1: out of order
            try write(vol, 2 * bs + q, piece(q))                                  // block 2: one middle piece
            try write(vol, 3 * bs, piece(q)); try write(vol, 3 * bs + 10, piece(100))  // block 3: a rewrite
            try write(vol, 4 * bs, piece(q) + [UInt8](repeating: 0, count: q))    // block 4: trailing zeros
            try vol.flush()
            try write(vol, 0, piece(q))                                           // block 0 again, committed owned
            try write(vol, 5 * bs + 3 * q, piece(q))                              // block 5: ends at the block's end
        }
        #expect(try store.verify(v).ok)
        try store.snapshot(v, as: try VolumeName("p-snap"))
        try store.withVolume(v) { vol in
            for i in 0..<2 { try write(vol, bs + i * q, piece(q)) }               // over the snapshot's block
            try write(vol, 6 * bs + q, piece(q))
        }
        #expect(try store.verify(v).ok)
        #expect(try store.verify(try VolumeName("p-snap")).ok)
        let r = try store.open(v, mode: .readOnly)
        #expect(try r.read(at: 0, length: want.count) == want)
    }
}

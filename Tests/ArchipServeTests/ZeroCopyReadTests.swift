import ArchipServe
import ArchipStore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Zero-copy reads: `Volume.readPieces` describes a read as zero runs and
/// ranges of object files, and the NBD server sends those with sendfile.
/// Both must give exactly the bytes `read` gives, over written blocks,
/// partly written blocks, holes and block boundaries, with many reads in flight.
@Suite struct ZeroCopyReads {
    static let block = 4 << 20
    var block: Int { Self.block }

    /// A volume of 4 blocks on a dir store: block 0 written in two places,
    /// block 1 whole, block 2 a hole, block 3 whole then zeroed in the middle.
    static func makeVolume(_ dir: TempDir) throws -> (VolumeStore, Volume) {
        let store = try VolumeStore.directory(dir.file("store"), node: "n")
        try store.create(try VolumeName("z"), size: ByteCount(UInt64(4 * block)))
        let v = try store.open(try VolumeName("z"), mode: .exclusive)
        try v.write(at: 8192, pattern(1, 4096, offset: 8192))
        try v.write(at: UInt64(block) - 3000, pattern(2, 6000, offset: block - 3000))
        try v.write(at: UInt64(block) + 4000, pattern(3, block - 4000, offset: block + 4000))
        try v.write(at: UInt64(3 * block), pattern(4, block, offset: 3 * block))
        try v.zero(at: UInt64(3 * block) + 65536, length: 131072)
        return (store, v)
    }

    /// The bytes the pieces stand for, read back with pread from their descriptors.
    static func assemble(_ pieces: [VolumeReadPiece]) throws -> [UInt8] {
        var out: [UInt8] = []
        for p in pieces {
            switch p {
            case .zeros(let n):
                out += [UInt8](repeating: 0, count: n)
            case .file(let d, let offset, let count):
                var buf = [UInt8](repeating: 0xEE, count: count)
                let n = buf.withUnsafeMutableBytes { pread(d.fd, $0.baseAddress, count, off_t(offset)) }
                #expect(n == count)
                out += buf
            }
        }
        return out
    }

    @Test func piecesEqualReadEverywhere() throws {
        let dir = try TempDir("zc")
        let (_, v) = try ZeroCopyReads.makeVolume(dir)
        defer { try? v.close() }
        let ranges: [(UInt64, Int)] = [
            (0, 1 << 20), (8192, 4096), (4096, 12288), (UInt64(block) - 4096, 8192),
            (UInt64(block) - 1 << 20, 2 << 20), (UInt64(2 * block) - 100, 200), (UInt64(2 * block), block),
            (UInt64(3 * block) + 60000, 200000), (0, 4 * block),
        ]
        for (offset, length) in ranges {
            let pieces = try #require(try v.readPieces(at: offset, length: length))
            // Adjacent zero runs are merged, so no two zero pieces follow each other.
            for (a, b) in zip(pieces, pieces.dropFirst()) {
                if case .zeros = a, case .zeros = b { Issue.record("two zero pieces in a row at \(offset)+\(length)") }
            }
            #expect(try ZeroCopyReads.assemble(pieces) == v.read(at: offset, length: length), "range \(offset)+\(length)")
        }
        // A hole is zeros, with no file behind it.
        let hole = try #require(try v.readPieces(at: UInt64(2 * block) + 4096, length: 65536))
        #expect(hole.count == 1)
        if case .zeros(let n)? = hole.first { #expect(n == 65536) } else { Issue.record("hole is not one zero piece: \(hole)") }
        // Out of range is the same error as read's.
        #expect(throws: StoreError.self) { try v.readPieces(at: UInt64(4 * block) - 10, length: 20) }
    }

    @Test func noPiecesWithoutDescriptorsOrInSharedMode() throws {
        let dir = try TempDir("zc")
        let store = try VolumeStore.directory(dir.file("store"), node: "n")
        try store.create(try VolumeName("s"), size: ByteCount(8 << 20))
        let shared = try store.open(try VolumeName("s"), mode: .shared)
        #expect(try shared.readPieces(at: 0, length: 65536) == nil)
        try shared.close()
        #expect(try MemoryBlockDevice(size: 1 << 20).readPieces(at: 0, length: 65536) == nil)
    }

    /// Large reads through NBD go out with sendfile; many in flight at once,
    /// answered in any order, each with the right bytes.
    @Test func nbdLargeReadsInFlightMatchTheVolume() throws {
        let dir = try TempDir("zc")
        let (_, v) = try ZeroCopyReads.makeVolume(dir)
        defer { try? v.close() }
        let (server, path, socketDir) = try startServer([try NBDExport(name: "z", device: VolumeDevice(v))]) {
            $0.workersPerConnection = 4
        }
        defer { withExtendedLifetime(socketDir) { try? server.stop() } }
        let (c, _) = try NBDTestClient.connect(path: path, export: "z")
        var expected: [UInt64: (UInt64, Int)] = [:]
        var lengths: [UInt64: Int] = [:]
        let sizes = [32 << 10, 1 << 20, 65536, 4096, 300_000, 2 << 20]
        var handle: UInt64 = 100
        for round in 0..<3 {
            for (i, n) in sizes.enumerated() {
                let offset = UInt64((i * 7_340_033 + round * 1_048_576) % (4 * ZeroCopyReads.block - n)) & ~511
                try c.sendRequest(type: 0, handle: handle, offset: offset, length: UInt32(n))
                expected[handle] = (offset, n)
                lengths[handle] = n
                handle += 1
            }
        }
        for _ in 0..<expected.count {
            let r = try c.readReply(readLengths: lengths)
            #expect(r.error == 0)
            let sent = expected.removeValue(forKey: r.handle)
            let (offset, n) = try #require(sent, "reply for unknown handle \(r.handle)")
            #expect(r.data == (try v.read(at: offset, length: n)), "read \(offset)+\(n)")
        }
        #expect(expected.isEmpty)
        try c.disconnect()
    }

    /// Small cached reads are answered by the connection's reader and their
    /// replies batched into one send: many of them sent at once (more than a
    /// batch holds), with a write and a flush in between that close a batch,
    /// must each get exactly one reply with the volume's bytes.
    @Test func nbdSmallReadsSentTogetherAreAnsweredInBatches() throws {
        let dir = try TempDir("zc")
        let (_, v) = try ZeroCopyReads.makeVolume(dir)
        defer { try? v.close() }
        // Block 2 is a hole; its zeros come from the batch as well.
        let before = try v.read(at: 0, length: 4 * block)
        let (server, path, socketDir) = try startServer([try NBDExport(name: "z", device: VolumeDevice(v))]) {
            $0.workersPerConnection = 2
        }
        defer { withExtendedLifetime(socketDir) { try? server.stop() } }
        let (c, _) = try NBDTestClient.connect(path: path, export: "z")
        var wire: [UInt8] = []
        var expected: [UInt64: [UInt8]] = [:]
        var lengths: [UInt64: Int] = [:]
        var handle: UInt64 = 1
        func read(_ offset: Int, _ n: Int) {
            wire += NBDRequestHeader(flags: 0, type: 0, handle: handle, offset: UInt64(offset), length: UInt32(n)).encoded()
            expected[handle] = Array(before[offset..<(offset + n)])
            lengths[handle] = n
            handle += 1
        }
        // Reads stay below 3 blocks + 1 MiB; the write goes above it.
        let span = 3 * block + (1 << 20)
        for i in 0..<120 {
            let n = i % 3 == 0 ? 65536 : 4096
            read((i * 1_234_567) % (span - n) & ~4095, n)
        }
        let written = pattern(9, 65536, offset: 0)
        let writeHandle = handle
        wire += NBDRequestHeader(flags: 0, type: 1, handle: writeHandle, offset: UInt64(4 * block - 65536), length: 65536).encoded()
        wire += written
        handle += 1
        let flushHandle = handle
        wire += NBDRequestHeader(flags: 0, type: 3, handle: flushHandle, offset: 0, length: 0).encoded()
        handle += 1
        for i in 0..<30 { read((i * 7_654_321) % (span - 4096) & ~4095, 4096) }
        try c.send(wire)

        var others = Set<UInt64>()
        for _ in 0..<(expected.count + 2) {
            let r = try c.readReply(readLengths: lengths)
            #expect(r.error == 0, "request \(r.handle)")
            if let want = expected.removeValue(forKey: r.handle) {
                let same = r.data == want // not the bytes themselves in a failure message
                #expect(same, "read \(r.handle): \(r.data.count) bytes, not the volume's")
            } else {
                #expect(others.insert(r.handle).inserted, "second reply for \(r.handle)")
            }
        }
        #expect(expected.isEmpty)
        #expect(others == [writeHandle, flushHandle])
        #expect(try v.read(at: UInt64(4 * block - 65536), length: 65536) == written)
        try c.disconnect()
    }
}

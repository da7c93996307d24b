import ArchipServe
import ArchipStore
import Foundation
import Testing
import ArchipTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Damaged blocks reach NBD and FUSE readers as EIO, never as bytes (issue
/// 15), on the copying path and on the zero-copy paths alike.
@Suite struct CheckedReadsServed {
    static let block = 4 << 20

    /// A dir store with volume "d" (2 blocks of data, flushed) and one byte
    /// flipped in page 2 of block 1's object, from outside the store.
    static func damagedVolume(_ dir: TempDir) throws -> (VolumeStore, [UInt8]) {
        let store = try VolumeStore.directory(dir.file("store"), node: "n")
        try store.create(try VolumeName("d"), size: ByteCount(UInt64(2 * block)))
        let bytes = pattern(5, 2 * block)
        try store.withVolume(try VolumeName("d")) { try $0.write(at: 0, bytes) }
        let layer = try store.info(try VolumeName("d")).layer
        let obj = dir.file("store/layers/\(layer)/b00000001")
        let fd = open(obj, O_RDWR)
        #expect(fd >= 0)
        var b: [UInt8] = [0]
        #expect(pread(fd, &b, 1, 8192 + 17) == 1)
        b[0] ^= 0x80
        #expect(pwrite(fd, &b, 1, 8192 + 17) == 1)
        close(fd)
        return (store, bytes)
    }

    @Test func nbdReadersGetEIOForDamagedPagesOnly() throws {
        let dir = try TempDir("ck")
        let (store, bytes) = try CheckedReadsServed.damagedVolume(dir)
        let v = try store.open(try VolumeName("d"), mode: .exclusive)
        defer { try? v.close() }
        let (server, path, socketDir) = try startServer([try NBDExport(name: "d", device: VolumeDevice(v))])
        defer { withExtendedLifetime(socketDir) { try? server.stop() } }
        let (c, _) = try NBDTestClient.connect(path: path, export: "d")
        let b = UInt64(CheckedReadsServed.block)
        // Small (answered from the page cache by the reader) and large
        // (zero-copy, sendfile) reads of the damaged page.
        #expect(try c.read(b + 8192, 4096).0 == 5)
        #expect(try c.read(b, 1 << 20).0 == 5)
        #expect(try c.read(b + 8192 + 17, 1).0 == 5)
        // The pages around it, and the other block, read.
        let (e1, d1) = try c.read(b + 12288, 65536)
        #expect(e1 == 0)
        let same1 = d1 == Array(bytes[(Int(b) + 12288)..<(Int(b) + 12288 + 65536)])
        #expect(same1, "pages around the damaged one")
        let (e2, d2) = try c.read(0, 1 << 20)
        #expect(e2 == 0)
        let same2 = d2 == Array(bytes[0..<(1 << 20)])
        #expect(same2, "the other block")
        try c.disconnect()
    }

    @Test func nbdReadersGetEIOForADamagedContentBlock() throws {
        let dir = try TempDir("ck")
        let store = try VolumeStore.directory(dir.file("store"), node: "n")
        try store.create(try VolumeName("v"), size: ByteCount(UInt64(2 * CheckedReadsServed.block)))
        // Two different blocks (the same bytes would be one content block).
        let bytes = pattern(6, CheckedReadsServed.block) + pattern(7, CheckedReadsServed.block)
        try store.withVolume(try VolumeName("v")) { try $0.write(at: 0, bytes) }
        try store.snapshot(try VolumeName("v"), as: try VolumeName("s"))
        let hashed = try store.hash(try VolumeName("s"))
        let h = hashed.hashmap.hashes[1]
        // Emptied, as `: > FILE` does.
        #expect(truncate(dir.file("store/blocks/\(h.prefix(2))/\(h.dropFirst(2).prefix(2))/\(h.dropFirst(4).prefix(2))/\(h)"), 0) == 0)
        let v = try store.open(try VolumeName("s"), mode: .readOnly)
        let (server, path, socketDir) = try startServer([try NBDExport(name: "s", device: VolumeDevice(v))])
        defer { withExtendedLifetime(socketDir) { try? server.stop() } }
        let (c, _) = try NBDTestClient.connect(path: path, export: "s")
        let b = UInt64(CheckedReadsServed.block)
        #expect(try c.read(b + 4096, 4096).0 == 5)
        #expect(try c.read(b, 1 << 20).0 == 5)
        let (e, d) = try c.read(0, 4096)
        #expect(e == 0)
        let same = d == Array(bytes[0..<4096])
        #expect(same, "the other block")
        try c.disconnect()
    }

    @Test func fuseReadersGetEIO() throws {
        if let why = missingPrerequisite(devices: ["/dev/fuse"], tools: []) {
            print("SKIP FUSE readers get EIO: \(why)")
            return
        }
        let dir = try TempDir("ck")
        let (store, bytes) = try CheckedReadsServed.damagedVolume(dir)
        let v = try store.open(try VolumeName("d"), mode: .exclusive)
        let fuse = try FUSEExport(device: VolumeDevice(v), mountpoint: dir.file("mnt"), fileName: "d")
        defer {
            fuse.stop()
            try? v.close()
        }
        let fd = open(fuse.path, O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        var page = [UInt8](repeating: 0, count: 4096)
        let b = CheckedReadsServed.block
        #expect(pread(fd, &page, 4096, off_t(b + 8192)) == -1)
        #expect(errno == EIO)
        #expect(pread(fd, &page, 4096, 0) == 4096)
        let same = page == Array(bytes[0..<4096])
        #expect(same, "the other block")
    }
}

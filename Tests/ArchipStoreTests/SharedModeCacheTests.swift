import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

/// Two holders of one volume in shared mode (live migration), each with its
/// own store handle as two nodes have: what one flushes, the other reads and
/// writes over, even where the first replaced block objects the second had
/// already opened (nothing is cached for reuse in shared mode).
@Suite struct SharedModeCache {
    @Test(arguments: TestBackend.persistent)
    func flushedOverwritesReachTheOtherHolderThroughReplacedObjects(_ backend: TestBackend) throws {
        let t = try backend.store("sharedcache", node: "src")
        defer { t.remove() }
        let a = t.store
        try a.create(name("m"), size: .mebibytes(16))
        let b = try t.node("dst")
        let va = try a.open(name("m"), mode: .shared)
        let vb = try b.open(name("m"), mode: .shared)
        let block = 4 << 20
        try va.write(at: 0, [UInt8](repeating: 0x11, count: 2 * block))
        try va.flush()
        // The destination reads both blocks: its store opens their objects.
        #expect(try vb.read(at: 0, length: 2 * block) == [UInt8](repeating: 0x11, count: 2 * block))
        // The source replaces block 0 whole (a new object under the same name),
        // writes into block 1 in place, and flushes.
        try va.write(at: 0, [UInt8](repeating: 0x22, count: block))
        try va.write(at: UInt64(block) + 4096, [UInt8](repeating: 0x33, count: 4096))
        try va.flush()
        #expect(try vb.read(at: 0, length: 8) == [UInt8](repeating: 0x22, count: 8))
        #expect(try vb.read(at: UInt64(block) + 4096, length: 4096) == [UInt8](repeating: 0x33, count: 4096))
        // Switch-over: the source replaces block 0 once more and closes; the
        // destination writes into that block in place, and nothing is lost.
        try va.write(at: 0, [UInt8](repeating: 0x44, count: block))
        try va.close()
        try vb.write(at: 8192, [UInt8](repeating: 0x55, count: 4096))
        try vb.close()
        let check = try a.open(name("m"), mode: .readOnly)
        #expect(try check.read(at: 0, length: 4) == [0x44, 0x44, 0x44, 0x44])
        #expect(try check.read(at: 8192, length: 4096) == [UInt8](repeating: 0x55, count: 4096))
        #expect(try check.read(at: UInt64(block) + 4096, length: 2) == [0x33, 0x33])
        try check.close()
        #expect(try a.verify(name("m")).ok)
    }
}

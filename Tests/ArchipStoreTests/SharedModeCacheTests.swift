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

    /// The switch-over as Ganeti and a real hypervisor run it: both nodes hold
    /// the volume shared; the guest's last writes on the source are flushed;
    /// it resumes on the target, which writes, before Ganeti closes the
    /// source's disks; then Ganeti opens the target's exclusive (the daemon
    /// converts its lock and reopens). The source's close must not fold the
    /// log into the map under the target's records (the RADOS lab's migration
    /// failed there: "map was changed by another writer"; a folder store lost
    /// the target's records), and neither holder may write over the other's.
    @Test(arguments: TestBackend.persistent)
    func theTargetWritesBeforeTheSourcesCloseAndNothingIsLost(_ backend: TestBackend) throws {
        let t = try backend.store("shared-switch", node: "src")
        defer { t.remove() }
        let a = t.store
        try a.create(name("m"), size: .mebibytes(16))
        let b = try t.node("dst")
        let block = 4 << 20
        // The source held it exclusively and wrote, then went shared.
        let first = try a.open(name("m"), mode: .exclusive)
        try first.write(at: 0, [UInt8](repeating: 0x11, count: 8192))
        try first.close()
        let va = try a.open(name("m"), mode: .shared)
        let target = LockOwner.forThisProcess(node: "dst")
        let vb = try b.open(name("m"), mode: .shared, owner: target)
        try va.write(at: 4096, [UInt8](repeating: 0x22, count: 4096))
        try va.write(at: UInt64(2 * block), [UInt8](repeating: 0x23, count: 4096))
        try va.flush()
        // The guest runs on the target now; the source still holds the volume.
        try vb.write(at: UInt64(block), [UInt8](repeating: 0x33, count: 4096))
        try vb.write(at: UInt64(3 * block), [UInt8](repeating: 0x34, count: block))
        try vb.flush()
        try va.close()
        try vb.write(at: UInt64(block) + 4096, [UInt8](repeating: 0x35, count: 4096))
        // Ganeti opens the target's disks exclusively.
        try b.lock(name("m"), owner: target, mode: .exclusive)
        try vb.close(keepingLock: true)
        let vx = try b.open(name("m"), mode: .exclusive, owner: target)
        try vx.write(at: 8192, [UInt8](repeating: 0x44, count: 4096))
        let expected: [(UInt64, UInt8, Int)] = [(0, 0x11, 4096), (4096, 0x22, 4096), (8192, 0x44, 4096),
                                                (UInt64(2 * block), 0x23, 4096), (UInt64(block), 0x33, 4096),
                                                (UInt64(block) + 4096, 0x35, 4096), (UInt64(3 * block), 0x34, block)]
        for (at, byte, count) in expected {
            #expect(try vx.read(at: at, length: count) == [UInt8](repeating: byte, count: count), "at \(at), on the target")
        }
        try vx.close()
        let check = try a.open(name("m"), mode: .readOnly)
        for (at, byte, count) in expected {
            #expect(try check.read(at: at, length: count) == [UInt8](repeating: byte, count: count), "at \(at), reopened")
        }
        try check.close()
        #expect(try a.verify(name("m")).ok)
        #expect(try a.lockState(name("m")) == nil)
    }
}

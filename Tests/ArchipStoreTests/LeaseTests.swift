import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// Leases on exclusive holds (docs/FENCING.md), on every backend.
@Suite struct LeaseBehaviour {
    @Test(arguments: TestBackend.persistent)
    func liveLeaseIsNotBrokenWithoutIgnoreLease(_ backend: TestBackend) throws {
        let t = try backend.store("live-lease")
        defer { t.remove() }
        let v = name("held")
        try t.store.create(v, size: .mebibytes(1))
        t.store.leaseSettings = LeaseSettings(lease: 3, clockSkew: 0.5)
        let held = try t.store.open(v)
        let first = try #require(held.epoch)
        let b = try t.node("node-b")
        b.leaseSettings = LeaseSettings(lease: 3, clockSkew: 0.5)
        // Open and unlock --force both refuse, naming the holder and the lease's end.
        #expect { _ = try b.open(v) } throws: { e in
            (e as? StoreError)?.code == .locked && "\(e)".contains("lease ends at") && "\(e)".contains("node n1")
        }
        #expect { _ = try b.breakLock(v, by: LockOwner.forThisProcess(node: "node-b"), ignoreLease: false) } throws: { e in
            (e as? StoreError)?.code == .locked && "\(e)".contains("node n1") && "\(e)".contains("--ignore-lease")
        }
        try held.write(at: 0, [1, 2, 3])
        try held.flush()
        // --ignore-lease breaks it: recorded, epoch + 1; the holder finds out at
        // its next renewal (at most lease/3) and every write after is refused.
        let brk = try b.breakLock(v, by: LockOwner.forThisProcess(node: "node-b"), ignoreLease: true)
        #expect(brk.reason == "ignored-lease" && brk.broken.node == "n1" && brk.epochBefore == first && brk.epochAfter == first + 1)
        let recorded = try #require(try b.lease(v)?.lastBreak)
        #expect(recorded.epochAfter == brk.epochAfter && recorded.broken == brk.broken && recorded.reason == "ignored-lease")
        #expect(try b.lockState(v) == nil)
        Thread.sleep(forTimeInterval: 1.5)
        #expect { try held.write(at: 0, [9]); try held.flush() } throws: { e in
            let e = e as? StoreError
            // RADOS: the break blocklisted the holder's client first.
            if backend == .rados && e?.description.contains("blocklisted") == true { return true }
            return e?.code == .fenced && e!.description.contains("node n1") && e!.description.contains("epoch \(first)")
        }
        #expect(throws: StoreError.self) { try held.close() }
        // The next holder's epoch is past the break's.
        let next = try b.open(v)
        #expect(next.epoch == first + 2)
        #expect(try next.read(at: 0, length: 3) == [1, 2, 3])
        try next.close()
    }

    @Test(arguments: TestBackend.persistent)
    func holdWithoutLeaseIsTakenOverByOpenAndLogged(_ backend: TestBackend) throws {
        let t = try backend.store("no-lease")
        defer { t.remove() }
        let v = name("orphan")
        try t.store.create(v, size: .mebibytes(1))
        // An old-style holder: a lock, no lease, taken long ago.
        let ghost = LockOwner(node: "dead-node", token: "t0", pid: 1, since: Date().addingTimeInterval(-3600))
        try t.store.lock(v, owner: ghost, mode: .exclusive)
        let b = try t.node("node-b")
        let logged = Locked<[String]>([])
        b.leaseLog = { line in logged.withLock { $0.append(line) } }
        let vb = try b.open(v)
        defer { try? vb.close() }
        let brk = try #require(vb.tookOver)
        #expect(brk.broken == ghost && brk.reason == "expired" && brk.leaseEnded != nil)
        #expect(vb.epoch == brk.epochAfter)
        let lines = logged.withLock { $0 }
        #expect(lines.count == 1 && lines[0].contains("node-b broke dead-node's exclusive lock") && lines[0].contains("epoch \(brk.epochBefore) -> \(brk.epochAfter)"), "\(lines)")
        #expect(try b.lockState(v)?.holders.map(\.node) == ["node-b"])
    }

    /// A shared hold (live migration) is never taken over by an open.
    @Test(arguments: TestBackend.persistent)
    func sharedHoldIsNotTakenOver(_ backend: TestBackend) throws {
        let t = try backend.store("shared-hold")
        defer { t.remove() }
        let v = name("migrating")
        try t.store.create(v, size: .mebibytes(1))
        try t.store.lock(v, owner: LockOwner(node: "a", token: "x", since: Date().addingTimeInterval(-3600)), mode: .shared)
        #expect(throws: StoreError.self) { _ = try t.node("b").open(v) }
    }

    /// Renewal under a steady write stream keeps the hold: no false fencing.
    @Test(arguments: TestBackend.persistent)
    func renewalUnderLoadKeepsTheLease(_ backend: TestBackend) throws {
        let t = try backend.store("renew-load")
        defer { t.remove() }
        let v = name("busy")
        try t.store.create(v, size: .mebibytes(64), blockSize: 1 << 20)
        t.store.leaseSettings = LeaseSettings(lease: 3, clockSkew: 0.5)
        let vol = try t.store.open(v)
        let epoch = vol.epoch
        let end = Date().addingTimeInterval(20)
        let failures = Locked<[String]>([])
        let writes = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 2) { w in
            var chunk = [UInt8](repeating: UInt8(w + 1), count: 256 << 10)
            var i = 0
            while Date() < end {
                chunk[0] = UInt8(truncatingIfNeeded: i)
                do {
                    try vol.write(at: UInt64((i * 2 + w) % 256) * UInt64(chunk.count), chunk)
                    if i % 8 == 0 { try vol.flush() }
                    writes.withLock { $0 += 1 }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    return
                }
                i += 1
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        #expect(writes.withLock { $0 } > 100)
        #expect(vol.epoch == epoch)
        let lease = try #require(try t.store.lease(v))
        #expect(lease.holder?.node == "n1" && lease.until! > Date())
        try vol.close()
        #expect(try t.store.lease(v)?.holder == nil)
    }
}

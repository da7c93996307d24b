import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// Fill checkpoints (issue 15, item 9): a running fill holds its name's fill
/// lock, so a second fill or resume of the name fails naming it, and `gc`
/// drops the checkpoint (and then the blocks) of a fill that is not running
/// once it is older than the fill grace, keeps (and reports) younger ones,
/// and never touches a running fill's.
@Suite struct FillCheckpoints {
    static let blockSize = 64 << 10
    static let imageSize = UInt64(4 * (64 << 10))

    /// Starts a fill of `target` and stores two distinct blocks of it.
    static func startFill(_ store: VolumeStore, _ target: String, seed: UInt8 = 1, resume: Bool = false) throws -> (FillStage, [ContentHash]) {
        let stage = try FillStage.begin(store: store, target: name(target), imageSize: imageSize, blockSize: blockSize,
                                        sourceID: "test-image", resume: resume)
        var hashes: [ContentHash] = []
        for b in 0..<2 {
            let bytes = [UInt8](repeating: seed &+ UInt8(b), count: blockSize)
            let h = bytes.withUnsafeBytes { SHA256.blockHash($0) }
            try bytes.withUnsafeBytes { _ = try stage.storeBlock(b, $0, hash: h) }
            hashes.append(h)
        }
        try stage.checkpoint()
        return (stage, hashes)
    }

    static func checkpointExists(_ t: TestStore, _ target: String) throws -> Bool {
        try t.outsideObjects().stat(FillStage.checkpointName(name(target))) != nil
    }

    static func blocksExist(_ t: TestStore, _ hashes: [ContentHash]) throws -> [Bool] {
        let o = try t.outsideObjects()
        return try hashes.map { try o.stat(StoreLayout.content($0)) != nil }
    }

    @Test(arguments: TestBackend.persistent)
    func gcDropsAnAbandonedFillAndItsBlocks(_ backend: TestBackend) throws {
        let t = try backend.store("fill-reclaim")
        defer { t.remove() }
        let (stage, hashes) = try FillCheckpoints.startFill(t.store, "img")
        stage.end()   // interrupted: the checkpoint stays, nobody runs it
        // A dry run says what it would do and removes nothing.
        let dry = try t.node("n1").gc(apply: false, grace: 0, fillGrace: 0)
        #expect(dry.reclaimedFills == ["img"])
        #expect(dry.unreferencedContentBlocks == 2)
        #expect(try FillCheckpoints.checkpointExists(t, "img"))
        let r = try t.node("n1").gc(apply: true, grace: 0, fillGrace: 0)
        #expect(r.reclaimedFills == ["img"])
        #expect(r.interruptedFills.isEmpty)
        #expect(try !FillCheckpoints.checkpointExists(t, "img"), "the abandoned checkpoint was not dropped")
        #expect(try FillCheckpoints.blocksExist(t, hashes) == [false, false], "its blocks were not reclaimed")
        #expect(try t.store.interruptedFills().isEmpty)
    }

    @Test(arguments: TestBackend.persistent)
    func gcKeepsAndReportsAYoungInterruptedFill(_ backend: TestBackend) throws {
        let t = try backend.store("fill-young")
        defer { t.remove() }
        let (stage, hashes) = try FillCheckpoints.startFill(t.store, "img")
        stage.end()
        let r = try t.node("n1").gc(apply: true, grace: 0, fillGrace: 3600)
        #expect(r.reclaimedFills.isEmpty)
        #expect(r.interruptedFills == ["img"])
        #expect(r.interruptedFillBytes == UInt64(2 * FillCheckpoints.blockSize))
        #expect(try FillCheckpoints.checkpointExists(t, "img"))
        #expect(try FillCheckpoints.blocksExist(t, hashes) == [true, true])
        // And it still resumes.
        let again = try FillStage.begin(store: t.store, target: name("img"), imageSize: FillCheckpoints.imageSize,
                                        blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: true)
        #expect(again.done.count == 2)
        again.end()
    }

    @Test(arguments: TestBackend.persistent)
    func gcNeverTouchesARunningFill(_ backend: TestBackend) throws {
        let t = try backend.store("fill-running")
        defer { t.remove() }
        let (stage, hashes) = try FillCheckpoints.startFill(t.store, "img")
        // The fill runs (holds its lock) in this process; gc from another "process".
        let r = try t.node("n1").gc(apply: true, grace: 0, fillGrace: 0)
        #expect(r.reclaimedFills.isEmpty)
        #expect(r.interruptedFills.isEmpty, "a running fill is not an interrupted one")
        #expect(try FillCheckpoints.checkpointExists(t, "img"))
        #expect(try FillCheckpoints.blocksExist(t, hashes) == [true, true])
        // The fill finishes with what it stored.
        for b in 2..<4 {
            let bytes = [UInt8](repeating: 0, count: FillCheckpoints.blockSize)
            try bytes.withUnsafeBytes { _ = try stage.storeBlock(b, $0, hash: SHA256.blockHash($0)) }
        }
        try stage.commit(volumeSize: FillCheckpoints.imageSize, mustCreate: true)
        let v = try t.store.open(name("img"), mode: .readOnly)
        #expect(try v.read(at: 0, length: 4) == [1, 1, 1, 1])
    }

    /// A fill whose process died (killed: no release) on this node is not
    /// running: gc reclaims it, and this node's next fill takes the name back
    /// without --force.
    @Test func aFillOfADeadProcessOnThisNodeIsNotRunning() throws {
        let t = try TestBackend.dir.store("fill-dead")
        defer { t.remove() }
        let (stage, _) = try FillCheckpoints.startFill(t.store, "img")
        stage.end()
        let dead = try FillCheckpoints.deadPid()
        let lock = FillStage.fillLock(name("img"))
        try t.store.objects.acquireLock(lock, owner: LockOwner(node: "n1", token: "dead", pid: dead, since: Date()), mode: .exclusive)
        // Held by a pid of another node: counted as running (it cannot be checked from here).
        let other = try t.node("n2").gc(apply: true, grace: 0, fillGrace: 0)
        #expect(other.reclaimedFills.isEmpty)
        #expect(try FillCheckpoints.checkpointExists(t, "img"))
        // This node's resume takes it back.
        let resumed = try FillStage.begin(store: t.node("n1"), target: name("img"), imageSize: FillCheckpoints.imageSize,
                                          blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: true)
        #expect(resumed.done.count == 2)
        resumed.end()
        try t.store.objects.acquireLock(lock, owner: LockOwner(node: "n1", token: "dead", pid: dead, since: Date()), mode: .exclusive)
        let r = try t.node("n1").gc(apply: true, grace: 0, fillGrace: 0)
        #expect(r.reclaimedFills == ["img"])
        #expect(try !FillCheckpoints.checkpointExists(t, "img"))
        #expect(try t.store.objects.lockState(lock)?.holders.isEmpty ?? true, "the dead holder's lock is left")
    }

    /// A fill whose node died (its renewals stop, nothing is given back):
    /// another node's fill is refused while the fill's lease lasts (+ clock
    /// skew) and takes the name over right after, logging one line naming
    /// the dead holder; it resumes from the checkpoint, and the dead holder,
    /// were it to wake up, can no longer write a checkpoint. A fill lock
    /// without a lease (an older archip's) keeps the hour rule.
    @Test(arguments: TestBackend.persistent)
    func aFillOnADeadNodeIsTakenOverOnceItsLeaseEnds(_ backend: TestBackend) throws {
        let t = try backend.store("fill-lease")
        defer { t.remove() }
        let settings = LeaseSettings(lease: 1.5, clockSkew: 0.5)
        let n1 = try t.node("n1")
        let n2 = try t.node("n2")
        n1.leaseSettings = settings
        n2.leaseSettings = settings
        let logged = Locked<[String]>([])
        n2.leaseLog = { line in logged.withLock { $0.append(line) } }
        func resume(on store: VolumeStore) throws -> FillStage {
            try FillStage.begin(store: store, target: name("img"), imageSize: FillCheckpoints.imageSize,
                                blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: true)
        }
        let (dead, _) = try FillCheckpoints.startFill(n1, "img")
        // Renewed: well past its first lease + skew, the fill still runs.
        Thread.sleep(forTimeInterval: 2.5)
        #expect(throws: StoreError.self) { _ = try resume(on: n2) }
        #expect(try FillStage.runningHolder(store: n2, target: name("img"))?.node == "n1")

        // n1 dies: its renewals stop, its hold stays in the store.
        dead.keeper.signalStop()
        Thread.sleep(forTimeInterval: 0.6)   // a renewal under way ends
        let lease = try #require(try n2.lease(at: FillStage.fillLease(name("img"))))
        let until = try #require(lease.until)
        #expect(lease.holder?.node == "n1")
        let free = until.addingTimeInterval(settings.clockSkew)
        var taken: FillStage?
        var refusals = 0
        while taken == nil, Date() < free.addingTimeInterval(3) {
            do {
                taken = try resume(on: n2)
            } catch let e as StoreError where e.code == .locked {
                #expect(Date() < free.addingTimeInterval(0.2), "still refused past the lease's end + skew: \(e)")
                #expect(e.description.contains("n1") && !e.description.contains("\n"), "\(e)")
                refusals += 1
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        let stage = try #require(taken, "n1's fill was not taken over within 3 s of its lease's end + skew")
        #expect(Date() >= free, "taken over before the lease's end + clock skew")
        #expect(refusals > 0, "the lease was not waited for")
        #expect(stage.tookOver?.broken.node == "n1")
        #expect(stage.done.count == 2, "the checkpoint's blocks were not resumed")
        let lines = logged.withLock { $0 }
        #expect(lines.count == 1 && lines[0].contains("fill of img") && lines[0].contains("n1"), "\(lines)")

        // The dead holder, woken up, writes no checkpoint over the new one.
        #expect(throws: StoreError.self) { try dead.checkpoint() }
        for b in 2..<4 {
            let bytes = [UInt8](repeating: 9, count: FillCheckpoints.blockSize)
            try bytes.withUnsafeBytes { _ = try stage.storeBlock(b, $0, hash: SHA256.blockHash($0)) }
        }
        try stage.commit(volumeSize: FillCheckpoints.imageSize, mustCreate: true)
        #expect(try n2.open(name("img"), mode: .readOnly).read(at: 0, length: 1) == [1])
        withExtendedLifetime(dead) {}

        // An older archip's fill lock (no lease) on another node: the hour rule.
        // (A fresh connection: on RADOS the take-over blocklisted n1's client.)
        let (old, _) = try FillCheckpoints.startFill(try t.node("n1"), "img2")
        old.end()
        try t.store.objects.acquireLock(FillStage.fillLock(name("img2")),
                                        owner: LockOwner(node: "n1", token: "old", pid: 1, since: Date()), mode: .exclusive)
        Thread.sleep(forTimeInterval: settings.lease + settings.clockSkew + 0.2)
        #expect(throws: StoreError.self) {
            _ = try FillStage.begin(store: n2, target: name("img2"), imageSize: FillCheckpoints.imageSize,
                                    blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: true)
        }
    }

    /// Two resumes (or fills) of one name at once: the second fails at once,
    /// in one line naming the first; the first goes on.
    @Test(arguments: TestBackend.persistent)
    func aSecondResumeOfARunningFillFailsNamingIt(_ backend: TestBackend) throws {
        let t = try backend.store("fill-twice")
        defer { t.remove() }
        let (first, _) = try FillCheckpoints.startFill(t.store, "img")
        first.end()
        let running = try FillStage.begin(store: t.store, target: name("img"), imageSize: FillCheckpoints.imageSize,
                                          blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: true)
        for resume in [true, false] {
            do {
                _ = try FillStage.begin(store: t.node("n1"), target: name("img"), imageSize: FillCheckpoints.imageSize,
                                        blockSize: FillCheckpoints.blockSize, sourceID: "test-image", resume: resume)
                Issue.record("a second fill (resume: \(resume)) ran beside the first")
            } catch let e as StoreError {
                #expect(e.code == .locked, "\(e)")
                #expect(e.description.contains("running"), "\(e)")
                #expect(e.description.contains("pid \(getpid())"), "\(e)")
                #expect(!e.description.contains("\n"))
            }
        }
        // Abort refuses too: the checkpoint is the running fill's.
        #expect(throws: StoreError.self) { _ = try FillStage.abort(store: t.node("n1"), target: name("img")) }
        #expect(try FillCheckpoints.checkpointExists(t, "img"))
        running.end()
        #expect(try FillStage.abort(store: t.node("n1"), target: name("img")))
    }

    /// The pid of a process that has exited.
    static func deadPid() throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        return p.processIdentifier
    }
}

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

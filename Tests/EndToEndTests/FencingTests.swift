import ArchipRados
import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

/// A holder that is paused (SIGSTOP), not dead, while its lease runs out:
/// another node takes the volume (the break recorded, logged, the epoch
/// moving on), and when the first wakes up none of its writes lands.
@Suite struct PausedHolderFencing {
    static let lease = 2.0
    static let skew = 0.5

    final class Holder {
        let process = Process()
        let out: String
        init(store: String, volume: String, node: String, byte: UInt8, length: Int) throws {
            out = FileManager.default.temporaryDirectory.appendingPathComponent("holder-\(UUID().uuidString)").path
            _ = FileManager.default.createFile(atPath: out, contents: nil)
            process.executableURL = URL(fileURLWithPath: CLI.binDir + "/archip-torture")
            process.arguments = ["hold", "--store", store, "--volume", volume, "--node", node,
                                 "--lease", "\(PausedHolderFencing.lease)", "--skew", "\(PausedHolderFencing.skew)",
                                 "--byte", "\(byte)", "--length", "\(length)", "--out", out]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
        var lines: [String] {
            String(decoding: FileManager.default.contents(atPath: out) ?? Data(), as: UTF8.self)
                .split(separator: "\n").map(String.init)
        }
        var acknowledged: Int { lines.filter { $0.hasPrefix("ok ") }.count }
        /// Waits (at most `seconds`) until `done` holds.
        func wait(_ seconds: Double, until done: () -> Bool) -> Bool {
            let end = Date().addingTimeInterval(seconds)
            while Date() < end { if done() { return true }; usleep(10_000) }
            return done()
        }
        func kill() {
            if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            try? FileManager.default.removeItem(atPath: out)
        }
    }

    @Test(arguments: TestBackend.persistent)
    func pausedHolderCannotWriteAfterTheBreak(_ backend: TestBackend) throws {
        let t = try backend.store("paused")
        defer { t.remove() }
        let v = try VolumeName("fenced")
        let length = 256 << 10
        try t.store.create(v, size: .mebibytes(4), blockSize: 64 << 10)
        let p1 = try Holder(store: t.location, volume: v.value, node: "node-a", byte: 0x58, length: length)
        defer { p1.kill() }
        #expect(p1.wait(30) { p1.acknowledged >= 3 }, "the holder never wrote: \(p1.lines)")
        // Right after an acknowledgement the holder sleeps 100 ms: pause it there.
        let seen = p1.acknowledged
        _ = p1.wait(5) { p1.acknowledged > seen }
        kill(p1.process.processIdentifier, SIGSTOP)
        let pausedAt = p1.acknowledged

        // A second node: refused while the lease is live...
        let b = try t.node("node-b")
        b.leaseSettings = LeaseSettings(lease: Self.lease, clockSkew: Self.skew)
        let logged = Locked<[String]>([])
        b.leaseLog = { line in logged.withLock { $0.append(line) } }
        do {
            _ = try b.open(v)
            Issue.record("node-b opened a volume node-a holds with a live lease")
        } catch let e as StoreError {
            #expect(e.code == .locked && e.description.contains("lease ends at"), "\(e)")
        }
        // ...and takes it over once the lease plus the clock skew are past.
        Thread.sleep(forTimeInterval: Self.lease + Self.skew + 0.3)
        let vb = try b.open(v)
        let took = try #require(vb.tookOver, "the open did not record a break")
        #expect(took.broken.node == "node-a" && took.by.node == "node-b" && took.reason == "expired")
        #expect(took.epochAfter == took.epochBefore + 1 && vb.epoch == took.epochAfter)
        #expect(logged.withLock { $0 }.contains { $0.contains("node-b broke node-a's exclusive lock") }, "\(logged.withLock { $0 })")
        let record = try #require(try b.lease(v))
        #expect(record.lastBreak?.epochAfter == took.epochAfter && record.lastBreak?.by == took.by && record.holder?.node == "node-b")
        try vb.write(at: 0, [UInt8](repeating: 0x59, count: length))
        try vb.flush()

        // node-a wakes up: nothing it writes from now on may land.
        kill(p1.process.processIdentifier, SIGCONT)
        #expect(p1.wait(20) { !p1.process.isRunning }, "node-a went on writing after the break: \(p1.lines.suffix(5))")
        #expect(p1.acknowledged == pausedAt, "node-a acknowledged writes after the break: \(p1.lines.suffix(5))")
        if backend == .dir {
            #expect(p1.lines.contains { $0.hasPrefix("refused fenced:") && $0.contains("node node-a") }, "\(p1.lines.suffix(5))")
        } else {
            #expect(p1.lines.contains { $0.hasPrefix("refused ") }, "\(p1.lines.suffix(5))")
        }
        try vb.close()
        let check = try t.node("checker")
        let r = try check.open(v, mode: .readOnly)
        #expect(try r.read(at: 0, length: length) == [UInt8](repeating: 0x59, count: length), "node-a's bytes landed after the break")
        #expect(try check.verify(v).ok)
    }
}

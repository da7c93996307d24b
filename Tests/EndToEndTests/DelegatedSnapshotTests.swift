import ArchipTestSupport
import Foundation
import Testing

/// A snapshot of a volume another node holds goes to the holder's daemon
/// through the store (SnapshotRequests): taken there, it holds every write the
/// holder acknowledged; with the holder's daemon dead, the request fails in
/// one line naming the holder, within its deadline, and leaves nothing.
@Suite(.serialized) struct DelegatedSnapshots {
    typealias RunningDaemon = DaemonResilience.RunningDaemon

    @Test func theHolderTakesItAndADeadHolderIsNamed() throws {
        if DaemonResilience.skip("delegated snapshots") { return }
        let cli = CLI()
        try cli.run(["create", "v", "--size", "16M"])
        var holder: RunningDaemon? = try RunningDaemon(cli, node: "node-b")
        defer { holder?.stop() }
        let b = try #require(holder)
        let dev = try b.attach("v").device
        #expect(try b.run(["open", "v"]).status == 0)
        // Acknowledged writes through node b's device, never flushed by hand.
        let pattern = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ ($0 >> 9)) }
        let file = cli.store + "-pattern"
        try Data(pattern).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let dd = try shell("dd if=\(file) of=\(dev) bs=1M seek=1 oflag=direct status=none")
        #expect(dd.status == 0, "\(dd.out)")

        // Node a, which has no daemon of its own for this volume.
        let elsewhere = ["ARCHIP_NODE": "node-a", "ARCHIP_RUNTIME_DIR": cli.store + "-run-none"]
        let t = Date()
        let r = try cli.run(["snapshot", "v", "s1"], env: elsewhere)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Date().timeIntervalSince(t) < 5, "answered within a few polls")
        let read = try cli.run(["read", "s1", "--offset", "\(1 << 20)", "--length", "\(pattern.count)"], env: elsewhere)
        #expect(read.status == 0 && Array(read.stdoutData) == pattern, "the snapshot holds every write node b acknowledged")
        #expect(b.logText.contains("snapshot v as s1 for node node-a"), "\(b.logText)")
        #expect(!FileManager.default.fileExists(atPath: cli.store + "/requests/v/snapshot"), "no request left")

        // Node b's daemon dies (SIGKILL: its lock stays in the store).
        if let pid = b.pid { kill(pid, SIGKILL); for _ in 0..<100 where kill(pid, 0) == 0 { usleep(20_000) } }
        let t2 = Date()
        let dead = try cli.run(["snapshot", "v", "s2", "--timeout", "1.5"], env: elsewhere)
        expectOneLineError(dead, status: 1, mentioning: "node-b", "a dead holder")
        #expect(dead.stderr.contains("did not answer within"), "\(dead.stderr)")
        #expect(Date().timeIntervalSince(t2) < 10)
        #expect(try cli.run(["info", "s2"]).status != 0, "no snapshot s2")
        #expect(!FileManager.default.fileExists(atPath: cli.store + "/requests/v/snapshot"), "the request was withdrawn")

        // Node b comes back: its daemon undoes what the dead one held.
        b.process.waitUntilExit()
        holder = nil
        let again = try RunningDaemon(cli, node: "node-b")
        defer { again.stop() }
        let rel = try cli.run(["info", "v", "--json"])
        #expect(!rel.stdout.contains("\"holders\" : [{") && !rel.stdout.contains("serve-"), "the dead daemon's hold was released: \(rel.stdout)")
    }
}

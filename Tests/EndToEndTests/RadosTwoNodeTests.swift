import ArchipTestSupport
import Foundation
import Testing

/// The rados pool of `make rados-test` (ARCHIP_TEST_RADOS), or nil.
private let radosBase: String? = {
    guard let u = ProcessInfo.processInfo.environment["ARCHIP_TEST_RADOS"], !u.isEmpty else { return nil }
    return u
}()

extension CLI {
    /// A CLI over a given store (a rados URL) instead of a fresh folder.
    init(store: String) { self.store = store }
}

extension Node {
    init(_ cli: CLI, _ name: String, runtime: String) {
        self.cli = cli
        self.name = name
        self.runtime = runtime
    }
}

/// Two nodes on one Ceph pool: two `archip serve` daemons with their own node
/// names and runtime folders, the store a rados URL (one namespace per run).
/// The cluster refuses the second node's attach, naming the holder; after the
/// first node detaches, the second attaches and reads every acknowledged write.
@Suite(.serialized, .enabled(if: radosBase != nil, "ARCHIP_TEST_RADOS is not set (make rados-test sets it)"))
struct RadosTwoNodes {
    @Test func secondNodeIsRefusedThenReadsEveryAcknowledgedWrite() throws {
        if skipDataPath("two nodes on rados") { return }
        let base = try #require(radosBase)
        let tag = UUID().uuidString.prefix(8).lowercased()
        let cli = CLI(store: base + (base.contains("?") ? "&" : "?") + "ns=twonode-\(tag)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-rados-2n-\(tag)").path
        try TestDaemons.register(root: dir)
        let a = Node(cli, "node-a", runtime: dir + "/run-a"), b = Node(cli, "node-b", runtime: dir + "/run-b")
        defer {
            a.stop(); b.stop(); try? FileManager.default.removeItem(atPath: dir)
            // The run's namespace goes too (memstore keeps everything in the OSD's memory).
            _ = try? shell("'\(HTTPFixture.repoRoot.path)/tests/e2e/ceph/ceph-up.sh' purge twonode-\(tag)")
        }
        let created = try a.run(["create", "v", "--size", "64M"])
        try #require(created.status == 0, "create: \(created.stderr)")

        // Node A attaches and writes: whole blocks, a partial block, a block
        // past the first ones; each acknowledged by a flush.
        let attachA = try a.run(["attach", "v"])
        let devA = TwoNodes.lines(attachA)
        try #require(devA.count == 2, "attach on node-a: \(attachA.stderr)")
        #expect(try TwoNodes.mode(a, "v") == "exclusive")
        try TwoNodes.qemuIO(devA[1], ["write -P 0x11 0 16M", "flush", "write -P 0x22 5M 4k", "write -P 0x33 40M 4M",
                                      "write -z 8M 4M", "flush"], "node-a writes")

        // Node B is refused by the cluster (a RADOS lock), naming node A.
        expectOneLineError(try b.run(["attach", "v"]), status: 1, mentioning: "node-a", "attach on node-b")
        expectOneLineError(try b.run(["attach", "v", "--shared"]), status: 1, mentioning: "node-a", "shared attach on node-b")
        expectOneLineError(try b.run(["open", "v"]), status: 1, mentioning: "node-a", "open on node-b")
        #expect(try TwoNodes.mode(b, "v") == nil, "a refused attach left a device on node-b")
        let info = try a.run(["info", "v"])
        #expect(info.stdout.contains("node-a"), "info names the holder: \(info.stdout)")

        // Last acknowledged writes, then A detaches.
        try TwoNodes.qemuIO(devA[1], ["write -P 0x44 60M 4M", "write -P 0x55 16M 512", "flush"], "node-a last writes")
        #expect(try a.run(["detach", "v"]).status == 0)
        #expect(try TwoNodes.mode(a, "v") == nil)

        // B attaches and reads every acknowledged write (and zeros elsewhere).
        let attachB = try b.run(["attach", "v"])
        let devB = TwoNodes.lines(attachB)
        try #require(devB.count == 2, "attach on node-b after node-a detached: \(attachB.stderr)")
        #expect(try TwoNodes.mode(b, "v") == "exclusive")
        try TwoNodes.qemuIO(devB[1], ["read -P 0x11 0 5M", "read -P 0x22 5M 4k", "read -P 0x11 5124k 3068k",
                                      "read -P 0 8M 4M", "read -P 0x11 12M 4M", "read -P 0x55 16M 512",
                                      "read -P 0 16777728 1048064", "read -P 0 17M 23M", "read -P 0x33 40M 4M", "read -P 0 44M 16M",
                                      "read -P 0x44 60M 4M"], "node-b reads node-a's writes")
        #expect(try TwoNodes.deviceBytes(devB[0], mib: 60, count: 4) == "44")

        // Now B holds it: A is refused, naming B; B's writes survive its detach.
        expectOneLineError(try a.run(["attach", "v"]), status: 1, mentioning: "node-b", "attach on node-a while node-b holds it")
        try TwoNodes.qemuIO(devB[1], ["write -P 0x66 20M 1M", "flush"], "node-b writes")
        #expect(try b.run(["detach", "v"]).status == 0)
        let again = TwoNodes.lines(try a.run(["attach", "v"]))
        try #require(again.count == 2)
        try TwoNodes.qemuIO(again[1], ["read -P 0x66 20M 1M", "read -P 0x44 60M 4M"], "node-a after node-b")
        #expect(try a.run(["detach", "v"]).status == 0)
        let verify = try a.run(["verify", "v"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }
}

import ArchipTestSupport
import Foundation
import Testing

/// Two store "nodes" on one machine: two `archip serve` daemons with their own
/// node names and runtime folders over one store, as two Ganeti nodes over a
/// shared file system. Exclusive holds refuse the other node (naming the
/// holder); a shared hold (live migration) lets both attach, and what one node
/// acknowledged and flushed is what the other reads: nothing is cached for reuse.
@Suite(.serialized) struct TwoNodes {
    static func lines(_ r: CLI.Result) -> [String] { r.stdout.split(separator: "\n").map(String.init) }

    static func mode(_ node: Node, _ name: String) throws -> String? {
        let list = try JSONSerialization.jsonObject(with: try node.run(["attached", "--json"]).stdoutData) as? [[String: Any]]
        return list?.first { $0["name"] as? String == name }?["mode"] as? String
    }

    /// qemu-io against an NBD URI; status 0 and no failed pattern check.
    static func qemuIO(_ uri: String, _ commands: [String], _ what: String) throws {
        let r = try shell("qemu-io -f raw " + commands.map { "-c '\($0)'" }.joined(separator: " ") + " '\(uri)' 2>&1")
        #expect(r.status == 0 && !r.out.contains("fail") && !r.out.contains("Pattern verification failed"), "\(what): \(r.out)")
    }

    /// The distinct bytes of a range of a block device, read with O_DIRECT
    /// (the device's page cache is not what is being tested).
    static func deviceBytes(_ dev: String, mib offset: Int, count: Int) throws -> String {
        try shell("dd if=\(dev) bs=1M skip=\(offset) count=\(count) iflag=direct 2>/dev/null | od -An -tx1 -v | tr -s ' \\n' '\\n' | sed '/^$/d' | sort -u | tr '\\n' ' '")
            .out.trimmingCharacters(in: .whitespaces)
    }

    /// The same through the page cache (a buffered reader, udev's probe).
    static func bufferedBytes(_ dev: String, mib offset: Int, count: Int) throws -> String {
        try shell("dd if=\(dev) bs=1M skip=\(offset) count=\(count) 2>/dev/null | od -An -tx1 -v | tr -s ' \\n' '\\n' | sed '/^$/d' | sort -u | tr '\\n' ' '")
            .out.trimmingCharacters(in: .whitespaces)
    }

    @Test func exclusiveRefusesTheOtherNodeAndSharedMigrationSeesEveryAcknowledgedWrite() throws {
        if skipDataPath("two nodes, live migration") { return }
        let cli = CLI()
        let a = Node(cli, "node-a"), b = Node(cli, "node-b")
        defer { a.stop(); b.stop() }
        #expect(a.runtime != b.runtime)
        try a.run(["create", "v", "--size", "64M"])

        // Exclusive on A: B is refused, whichever mode it asks for, with A's name.
        let devA = TwoNodes.lines(try a.run(["attach", "v"]))
        try #require(devA.count == 2, "attach on node-a")
        #expect(try TwoNodes.mode(a, "v") == "exclusive")
        try TwoNodes.qemuIO(devA[1], ["write -P 0x11 0 16M", "flush"], "node-a first writes")
        expectOneLineError(try b.run(["attach", "v"]), status: 1, mentioning: "node-a", "exclusive attach on node-b")
        expectOneLineError(try b.run(["attach", "v", "--shared"]), status: 1, mentioning: "node-a", "shared attach on node-b while node-a is exclusive")
        expectOneLineError(try b.run(["open", "v"]), status: 1, mentioning: "node-a", "open on node-b")
        #expect(try TwoNodes.mode(b, "v") == nil, "a refused attach left a device on node-b")

        // Live migration: A converts its hold to shared, B attaches shared.
        #expect(try a.run(["open", "v", "--shared"]).status == 0)
        #expect(try TwoNodes.mode(a, "v") == "shared")
        let attachB = try b.run(["attach", "v", "--shared"])
        #expect(attachB.status == 0, "\(attachB.stderr)")
        let devB = TwoNodes.lines(attachB)
        try #require(devB.count == 2)
        #expect(devB[1] != devA[1], "each node has its own NBD socket")
        #expect(try TwoNodes.mode(b, "v") == "shared")
        let info = try JSONSerialization.jsonObject(with: try a.run(["info", "v", "--json"]).stdoutData) as? [String: Any]
        let lockText = "\(info?["lock"] ?? "")"
        #expect(lockText.contains("node-a") && lockText.contains("node-b") && lockText.contains("shared"), "lock: \(lockText)")

        // B reads first (its daemon opens the block objects it reads) ...
        try TwoNodes.qemuIO(devB[1], ["read -P 0x11 0 16M"], "node-b reads node-a's first writes")
        #expect(try TwoNodes.deviceBytes(devB[0], mib: 0, count: 16) == "11")
        // A process keeps node-b's device open, as a running QEMU does: the
        // kernel keeps the device's page cache while anyone has it open.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sleep")
        holder.arguments = ["120"]
        let device = try #require(FileHandle(forReadingAtPath: devB[0]))
        holder.standardInput = device
        holder.standardOutput = FileHandle.nullDevice
        holder.standardError = FileHandle.nullDevice
        try holder.run()
        try device.close()   // only the holder keeps it open (a detach waits for every opener)
        // SIGKILL: a child may inherit an ignored SIGTERM from the test runner.
        func stopHolder() { if holder.isRunning { kill(holder.processIdentifier, SIGKILL); holder.waitUntilExit() } }
        defer { stopHolder() }
        #expect(try TwoNodes.bufferedBytes(devB[0], mib: 0, count: 1) == "11")   // now in node-b's page cache
        // ... then A overwrites: whole blocks (replaced objects), partial
        // blocks (in place), zeroes, and new blocks, each acknowledged and flushed.
        try TwoNodes.qemuIO(devA[1], ["write -P 0x22 0 8M", "write -P 0x33 9M 4k", "write -z 12M 4M",
                                      "write -P 0x44 32M 8M", "flush"], "node-a writes while shared")
        // B sees every flushed write while both hold the volume ...
        try TwoNodes.qemuIO(devB[1], ["read -P 0x22 0 8M", "read -P 0x11 8M 1M", "read -P 0x33 9M 4k", "read -P 0x11 9220k 2044k",
                                      "read -P 0 12M 4M", "read -P 0x44 32M 8M"], "node-b during migration")
        #expect(try TwoNodes.deviceBytes(devB[0], mib: 0, count: 8) == "22")
        #expect(try TwoNodes.deviceBytes(devB[0], mib: 32, count: 8) == "44")

        // ... and, after A's last acknowledged writes and its detach (the
        // migration's end on the source), every one of them.
        try TwoNodes.qemuIO(devA[1], ["write -P 0x55 4M 4k", "write -P 0x66 60M 4M", "flush"], "node-a last writes")
        #expect(try a.run(["detach", "v"]).status == 0)
        #expect(try TwoNodes.mode(a, "v") == nil)
        try TwoNodes.qemuIO(devB[1], ["read -P 0x22 0 4M", "read -P 0x55 4M 4k", "read -P 0x22 4100k 4092k",
                                      "read -P 0x33 9M 4k", "read -P 0 12M 4M", "read -P 0x44 32M 8M", "read -P 0x66 60M 4M"],
                             "node-b after node-a detached")
        #expect(try TwoNodes.deviceBytes(devB[0], mib: 60, count: 4) == "66")

        // B takes the volume over (exclusive): now A is refused, naming B.
        #expect(try b.run(["open", "v"]).status == 0)
        #expect(try TwoNodes.mode(b, "v") == "exclusive")
        // Taking the hold dropped node-b's page cache of the device: a buffered
        // reader sees node-a's writes, not what was cached before them.
        #expect(try TwoNodes.bufferedBytes(devB[0], mib: 0, count: 1) == "22")
        expectOneLineError(try a.run(["attach", "v"]), status: 1, mentioning: "node-b", "attach on node-a after the migration")
        try TwoNodes.qemuIO(devB[1], ["write -P 0x77 20M 1M", "flush"], "node-b writes as the new owner")
        stopHolder()
        #expect(try b.run(["detach", "v"]).status == 0)

        // Back on A: B's writes are there, and the store is consistent.
        let again = TwoNodes.lines(try a.run(["attach", "v"]))
        try #require(again.count == 2)
        try TwoNodes.qemuIO(again[1], ["read -P 0x77 20M 1M", "read -P 0x66 60M 4M", "read -P 0x22 0 4M"], "node-a after node-b")
        #expect(try a.run(["detach", "v"]).status == 0)
        let verify = try a.run(["verify", "v"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }
}

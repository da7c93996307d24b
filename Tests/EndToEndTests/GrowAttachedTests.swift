import ArchipTestSupport
import Foundation
import Testing

/// `archip resize` of an attached volume goes through the node daemon: the
/// loop device and new NBD connections see the new size at once.
@Suite(.serialized) struct GrowAttached {
    static func jsonObject(_ r: CLI.Result) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any], "\(r.stdout) \(r.stderr)")
    }

    @Test func growWhileAttachedReachesLoopDeviceAndNewNBDConnections() throws {
        if skipDataPath("grow while attached") { return }
        let cli = CLI()
        let node = Node(cli, "node-g")
        defer { node.stop() }
        try node.run(["create", "v", "--size", "64M"])
        let dev = try node.run(["attach", "v"]).stdout.split(separator: "\n").map(String.init)
        try #require(dev.count == 2)
        func loopSize() throws -> String { try shell("blockdev --getsize64 \(dev[0])").out.trimmingCharacters(in: .whitespacesAndNewlines) }
        func nbdSize() throws -> Int? {
            let r = try shell("qemu-img info --output=json '\(dev[1])'")
            return (try? JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])?["virtual-size"] as? Int
        }
        #expect(try loopSize() == "\(64 << 20)")
        #expect(try nbdSize() == 64 << 20)
        #expect(try shell("qemu-io -f raw -c 'write -P 0x61 63M 1M' -c flush '\(dev[1])'").status == 0)

        let grow = try node.run(["resize", "v", "--size", "96M"])
        #expect(grow.status == 0, "\(grow.stderr)")
        // The kernel device, a new NBD connection, the daemon's list and the store agree.
        #expect(try loopSize() == "\(96 << 20)")
        #expect(try nbdSize() == 96 << 20)
        let listed = try JSONSerialization.jsonObject(with: try node.run(["attached", "--json"]).stdoutData) as? [[String: Any]]
        #expect(listed?.first?["size"] as? Int == 96 << 20)
        #expect(try GrowAttached.jsonObject(try node.run(["info", "v", "--json"]))["size"] as? Int == 96 << 20)

        // The new space is usable both ways, and the old data is where it was.
        let io = try shell("qemu-io -f raw -c 'read -P 0x61 63M 1M' -c 'read -P 0 64M 1M' -c 'write -P 0x62 90M 1M' -c flush '\(dev[1])'")
        #expect(io.status == 0 && !io.out.contains("fail"), "\(io.out)")
        let tail = try shell("dd if=\(dev[0]) bs=1M skip=90 count=1 iflag=direct 2>/dev/null | od -An -tx1 -v | tr -s ' \\n' '\\n' | sort -u | tr -d '\\n'")
        #expect(tail.out == "62", "loop device read of the grown area: \(tail.out)")
        #expect(try shell("dd if=/dev/urandom of=\(dev[0]) bs=1M seek=95 count=1 oflag=direct 2>&1").status == 0)

        // Shrinking an attached volume is refused, and changes nothing.
        expectOneLineError(try node.run(["resize", "v", "--size", "32M", "--allow-shrink"]), status: 1, mentioning: "attached", "shrink while attached")
        #expect(try loopSize() == "\(96 << 20)")

        #expect(try node.run(["detach", "v"]).status == 0)
        #expect(try node.run(["read", "v", "--offset", "\(90 << 20)", "--length", "2"]).stdoutData == Data([0x62, 0x62]))
        #expect(try node.run(["verify", "v"]).status == 0)
    }
}

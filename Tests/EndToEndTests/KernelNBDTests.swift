import ArchipTestSupport
import Foundation
import Testing

/// `archip attach --device=nbd`: the kernel's NBD client (Debian's nbd-client)
/// on the volume's own NBD socket, where the nbd module exists; a one-line
/// refusal that changes nothing where it does not. The loop device stays the default.
@Suite(.serialized) struct KernelNBD {
    /// Why the kernel NBD path cannot run here, or nil.
    static var unavailable: String? {
        if let why = dataPathUnavailable { return why }
        if access("/sys/module/nbd", F_OK) != 0 { return "nbd kernel module not available: /sys/module/nbd is missing" }
        if access("/dev/nbd0", F_OK) != 0 { return "nbd kernel module not available: /dev/nbd0 is missing" }
        if (try? shell("command -v nbd-client || test -x /usr/sbin/nbd-client || test -x /sbin/nbd-client"))?.status != 0 {
            return "nbd-client is not installed"
        }
        return nil
    }

    /// One control request, as raw JSON on the daemon's socket (python3: no Swift client in this target).
    static func control(_ runtime: String, _ json: String) throws -> String {
        let py = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\\n")
            buf = b""
            while not buf.endswith(b"\\n"):
                chunk = s.recv(65536)
                if not chunk: break
                buf += chunk
            print(buf.decode().strip())
            """
        let script = runtime + ".control.py"
        try py.write(toFile: script, atomically: true, encoding: .utf8)
        return try shell("python3 \(script) \(runtime)/control.sock '\(json)'").out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func badDeviceValueIsACommandLineError() throws {
        let cli = CLI()
        try cli.run(["create", "v", "--size", "8M"])
        let r = try cli.run(["attach", "v", "--device", "floppy"], env: ["ARCHIP_RUNTIME_DIR": cli.store + "-run"])
        expectOneLineError(r, status: 2, mentioning: "--device", "--device=floppy")
        #expect(!FileManager.default.fileExists(atPath: cli.store + "-run/control.sock"), "a daemon was started for a bad option")
    }

    @Test func nbdDeviceWhereTheModuleExistsElseAOneLineRefusal() throws {
        if let why = dataPathUnavailable { print("SKIP --device=nbd: \(why)"); return }
        let cli = CLI()
        let node = Node(cli, "node-k")
        defer { node.stop() }
        try node.run(["create", "v", "--size", "64M"])

        guard let missing = KernelNBD.unavailable else {
            try attachThroughKernelNBD(cli, node)
            return
        }
        print("SKIP kernel NBD device I/O: \(missing)")
        // Without the module: refused in one line, before anything is attached or locked.
        let r = try node.run(["attach", "v", "--device=nbd"])
        if missing.hasPrefix("nbd kernel module") {
            expectOneLineError(r, status: 1, mentioning: "nbd kernel module not available", "--device=nbd without the module")
        } else {
            expectOneLineError(r, status: 1, mentioning: "nbd-client", "--device=nbd without nbd-client")
        }
        let info = try JSONSerialization.jsonObject(with: try node.run(["info", "v", "--json"]).stdoutData) as? [String: Any]
        #expect(info?["lock"] == nil || info?["lock"] is NSNull, "a refused attach left a lock")
        // The daemon refuses the same request on its control socket (the protocol's new 'device' field).
        let plain = try node.run(["attach", "v"])   // starts the daemon; the loop device is still the default
        #expect(plain.status == 0 && plain.stdout.hasPrefix("/dev/loop"), "\(plain.stdout)\(plain.stderr)")
        try node.run(["create", "w", "--size", "8M"])
        let reply = try KernelNBD.control(node.runtime, #"{"op":"attach","name":"w","device":"nbd"}"#)
        #expect(reply.contains(#""ok":false"#) && reply.contains("nbd kernel module not available") || reply.contains("nbd-client"), "\(reply)")
        let bogus = try KernelNBD.control(node.runtime, #"{"op":"attach","name":"w","device":"floppy"}"#)
        #expect(bogus.contains(#""ok":false"#) && bogus.contains("loop or nbd"), "\(bogus)")
        let list = try JSONSerialization.jsonObject(with: try node.run(["attached", "--json"]).stdoutData) as? [[String: Any]]
        #expect(list?.map { $0["name"] as? String } == ["v"], "only the loop attachment is there")
        #expect(list?.first?["deviceKind"] as? String == "loop")
        #expect(try node.run(["detach", "v"]).status == 0)
        let infoW = try JSONSerialization.jsonObject(with: try node.run(["info", "w", "--json"]).stdoutData) as? [String: Any]
        #expect(infoW?["lock"] == nil || infoW?["lock"] is NSNull)
    }

    /// Where the module exists: /dev/nbdN carries the volume, grows with it, and goes at detach.
    func attachThroughKernelNBD(_ cli: CLI, _ node: Node) throws {
        let first = try node.run(["attach", "v", "--device=nbd"])
        #expect(first.status == 0, "\(first.stderr)")
        let dev = first.stdout.split(separator: "\n").map(String.init)
        try #require(dev.count == 2 && dev[0].hasPrefix("/dev/nbd") && dev[1].hasPrefix("nbd:unix:"), "\(first.stdout)")
        #expect(try node.run(["attach", "v", "--device=nbd"]).stdout == first.stdout)   // idempotent
        expectOneLineError(try node.run(["attach", "v"]), status: 1, mentioning: "detach it first", "loop attach of an nbd-attached volume")
        #expect(try shell("blockdev --getsize64 \(dev[0])").out.trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 << 20)")
        // Written through the kernel device, read through the NBD URI (same socket).
        #expect(try shell("head -c 1M /dev/zero | tr '\\0' '\\132' | dd of=\(dev[0]) bs=1M seek=2 oflag=direct conv=fsync 2>&1").status == 0)
        let io = try shell("qemu-io -f raw -c 'read -P 0x5a 2M 1M' '\(dev[1])' 2>&1")
        #expect(io.status == 0 && !io.out.contains("fail"), "\(io.out)")
        // Grow while attached: NBD_SET_SIZE on the connected device.
        #expect(try node.run(["resize", "v", "--size", "96M"]).status == 0)
        #expect(try shell("blockdev --getsize64 \(dev[0])").out.trimmingCharacters(in: .whitespacesAndNewlines) == "\(96 << 20)")
        #expect(try node.run(["detach", "v"]).status == 0)
        let index = (dev[0] as NSString).lastPathComponent
        #expect(!FileManager.default.fileExists(atPath: "/sys/block/\(index)/pid"), "\(dev[0]) still connected")
        #expect(try node.run(["read", "v", "--offset", "\(2 << 20)", "--length", "2"]).stdoutData == Data([0x5a, 0x5a]))
    }
}

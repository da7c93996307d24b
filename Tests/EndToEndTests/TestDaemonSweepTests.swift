import ArchipTestSupport
import Foundation
import Testing

/// A killed test run leaves the daemons its tests started (in sessions of
/// their own), their FUSE mounts and loop devices: the next run's sweep
/// stops and removes them, and only them.
@Suite(.serialized) struct TestDaemonSweep {
    /// Loop devices whose backing file is under `root`.
    static func loops(under root: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []).filter { n in
            n.hasPrefix("loop") && ((try? String(contentsOfFile: "/sys/block/\(n)/loop/backing_file", encoding: .utf8))?.hasPrefix(root) ?? false)
        }
    }

    /// Mount points under `root` in the mount namespace of `pid` ("self").
    static func mounts(under root: String, of pid: String = "self") -> [String] {
        let info = (try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)) ?? ""
        return info.split(separator: "\n").compactMap { l in
            let f = l.split(separator: " ")
            return f.count > 4 && f[4].hasPrefix(root) ? String(f[4]) : nil
        }
    }

    static func pid(_ file: String) -> Int32? {
        (try? String(contentsOfFile: file, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    @Test func aKilledRunsDaemonMountAndLoopDeviceAreCleanedUpAndALiveRunsAreNot() throws {
        if skipDataPath("sweep of a dead run's daemons") { return }
        // A live run: this process's own daemon, which the sweep must leave.
        let cli = CLI()
        let live = Node(cli, "node-live")
        defer { live.stop() }
        try live.run(["create", "keep", "--size", "16M"])
        #expect(try live.run(["attach", "keep"]).status == 0)
        let livePid = try #require(live.daemonPid())

        // The dead run: a child process (standing in for a test process)
        // that owns its root and attached a volume through a daemon.
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("archip-cli-\(UUID().uuidString)").path
        let runtime = root + "-run-node-a"
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sh")
        child.arguments = ["-c", "\"$ARCHIP\" create v --size 16M && \"$ARCHIP\" attach v >/dev/null && exec sleep 600"]
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
        env["ARCHIP"] = CLI.binDir + "/archip"
        env["ARCHIP_STORE"] = root
        env["ARCHIP_NODE"] = "node-a"
        env["ARCHIP_RUNTIME_DIR"] = runtime
        child.environment = env
        child.standardOutput = FileHandle.nullDevice
        try child.run()
        try TestDaemons.register(root: root, owner: child.processIdentifier)
        var daemon: Int32?
        for _ in 0..<200 where daemon == nil {
            if !Self.loops(under: root).isEmpty { daemon = Self.pid(runtime + "/serve.pid") }
            usleep(50_000)
        }
        let d = try #require(daemon, "the child's attach did not make a loop device")
        #expect(!Self.mounts(under: root, of: "\(d)").isEmpty, "no FUSE mount under \(root)")

        // The run is killed; its daemon lives on. Stopped too, so only SIGKILL ends it.
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        kill(d, SIGSTOP)
        #expect(kill(d, 0) == 0, "the daemon died with its test process; nothing to sweep")

        let swept = try TestDaemons.sweepOrphans()
        #expect(swept.roots.contains(root))
        #expect(swept.daemons.first { $0.pid == d }?.how == "SIGKILL", "\(swept.daemons)")
        var gone = false
        for _ in 0..<40 where !gone {
            let stat = (try? String(contentsOfFile: "/proc/\(d)/stat", encoding: .utf8)) ?? ""
            gone = stat.isEmpty || stat.split(separator: ")").last?.split(separator: " ").first == "Z"
            if !gone { usleep(50_000) }
        }
        #expect(gone, "the dead run's daemon \(d) still runs")
        #expect(Self.loops(under: root).isEmpty, "its loop device is still attached")
        #expect(Self.mounts(under: root).isEmpty, "its FUSE mount is still there")
        #expect(!FileManager.default.fileExists(atPath: runtime) && !FileManager.default.fileExists(atPath: root))

        // The live run's daemon and volume are untouched.
        #expect(kill(livePid, 0) == 0 && live.daemonPid() == livePid)
        #expect(!TestDaemonSweep.loops(under: cli.store).isEmpty)
        #expect(try live.run(["detach", "keep"]).status == 0)
    }
}

import ArchipTestSupport
import Foundation
import Testing

/// Two nodes on one kernel (containers, the multi-node lab in namespaces):
/// each node's daemon has its own mount namespace, and both use the same
/// runtime path, so their loop devices' backing files read the same
/// `RUN/mnt/VOL/VOL`. A daemon recovering after its predecessor's SIGKILL
/// must detach only the dead one's devices, never the other node's live one.
@Suite(.serialized) struct SharedKernelRecovery {
    @Test func recoveryLeavesAnotherNodesLoopDeviceAlone() throws {
        if DaemonResilience.skip("shared-kernel recovery") { return }
        let cli = CLI()
        try cli.run(["create", "v", "--size", "16M"])
        let runA = cli.store + "-run-node-a", dirB = cli.store + "-node-b-run"
        for d in [runA, dirB] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        defer { try? FileManager.default.removeItem(atPath: dirB) }
        // Node b's mount namespace, made before node a mounts anything (as a
        // node's is): there node a's runtime path is node b's own folder.
        let ns = Process()
        ns.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        ns.arguments = ["-m", "--propagation", "private", "/bin/sleep", "600"]
        try ns.run()
        defer { kill(ns.processIdentifier, SIGKILL); ns.waitUntilExit() }
        let nsPid = ns.processIdentifier
        var bound = false
        for _ in 0..<50 where !bound {
            bound = (try shell("nsenter -t \(nsPid) -m -- mount --bind \(dirB) \(runA)")).status == 0
            if !bound { usleep(20_000) }
        }
        #expect(bound)

        let a = try DaemonResilience.RunningDaemon(cli, node: "node-a")
        defer { a.stop() }
        // Both nodes hold it shared, as during a live migration.
        let attachA = try a.run(["attach", "v", "--shared"])
        #expect(attachA.status == 0, "\(attachA.stderr)")
        let devA = attachA.stdout.split(separator: "\n").first.map(String.init) ?? ""

        func inB(_ args: String) throws -> (status: Int32, out: String) {
            try shell("nsenter -t \(nsPid) -m -- \(CLI.binDir)/archip \(args) --store \(cli.store) --node node-b --runtime-dir \(runA)")
        }
        var started: [Process] = []
        defer { for p in started { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        func startB(_ log: String) throws -> Int32 {
            // A Process, not `sh -c '... &'`: the daemon would keep the shell's output pipe open.
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            p.arguments = ["-t", "\(nsPid)", "-m", "--", "setsid", CLI.binDir + "/archip", "serve", "--store", cli.store,
                           "--node", "node-b", "--runtime-dir", runA]
            p.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            p.standardOutput = out
            p.standardError = out
            p.standardInput = FileHandle.nullDevice
            try p.run()
            started.append(p)
            for _ in 0..<100 {
                if let pid = (try? String(contentsOfFile: dirB + "/serve.pid", encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
                   kill(pid, 0) == 0, FileManager.default.fileExists(atPath: dirB + "/control.sock"), (try inB("attached")).status == 0 {
                    return pid
                }
                usleep(50_000)
            }
            throw DaemonResilience.CLIError("node b's daemon did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        }
        // Node b attaches the same volume (the migration's target), then dies.
        try? FileManager.default.removeItem(atPath: dirB + "/serve.pid")
        let b1 = try startB(cli.store + "-b1.log")
        let attachB = try inB("attach v --shared")
        #expect(attachB.status == 0, "\(attachB.out)")
        let devB = attachB.out.split(separator: "\n").first.map(String.init) ?? ""
        kill(b1, SIGKILL)
        for _ in 0..<100 where kill(b1, 0) == 0 { usleep(20_000) }
        try? FileManager.default.removeItem(atPath: dirB + "/serve.pid")
        try? FileManager.default.removeItem(atPath: dirB + "/control.sock")
        // Its successor recovers.
        let b2 = try startB(cli.store + "-b2.log")
        defer { kill(b2, SIGKILL) }
        let recovered = (try? String(contentsOfFile: cli.store + "-b2.log", encoding: .utf8)) ?? ""
        #expect(recovered.contains("recovery: detached \(devB)"), "node b's own dead device: \(recovered)")
        #expect(!recovered.contains(devA), "node a's device untouched: \(recovered)")
        let backing = try shell("losetup -n -O BACK-FILE \(devA)")
        #expect(backing.status == 0 && backing.out.contains("/mnt/v/v"), "node a's loop device is still attached: \(backing.out)")
        let read = try shell("dd if=\(devA) of=/dev/null bs=1M count=1 iflag=direct status=none")
        #expect(read.status == 0, "and reads: \(read.out)")
        #expect(try a.attachedCount() == 1)
    }
}

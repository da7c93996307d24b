import ArchipTestSupport
import Foundation
import Testing

/// packaging/systemd/archip-serve.service, checked against the real binary:
/// its ExecStart is what `archip serve` accepts, and SIGTERM (what systemd
/// sends the main process with KillMode=mixed) detaches everything and exits 0,
/// so Restart=on-failure does not restart a clean stop.
@Suite(.serialized) struct SystemdUnit {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let unitPath = repoRoot.appendingPathComponent("packaging/systemd/archip-serve.service").path

    /// `[Section] key` → values (a key may repeat).
    static func parse(_ text: String) -> [String: [String]] {
        var out: [String: [String]] = [:]
        var section = ""
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") { section = String(line.dropFirst().dropLast()); continue }
            guard let eq = line.firstIndex(of: "=") else { continue }
            out["[\(section)] " + line[..<eq].trimmingCharacters(in: .whitespaces), default: []]
                .append(line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces))
        }
        return out
    }

    static func unit() throws -> [String: [String]] { parse(try String(contentsOfFile: unitPath, encoding: .utf8)) }

    static func execStart() throws -> [String] {
        try #require(try unit()["[Service] ExecStart"]?.first).split(separator: " ").map(String.init)
    }

    @Test func unitDeclaresWhatTheDaemonNeeds() throws {
        let u = try SystemdUnit.unit()
        #expect(u["[Service] Type"] == ["simple"])
        #expect(u["[Service] KillMode"] == ["mixed"], "SIGTERM must reach the daemon alone, first")
        #expect(u["[Service] KillSignal"] ?? ["SIGTERM"] == ["SIGTERM"])
        #expect(u["[Service] Restart"] == ["on-failure"])
        #expect(u["[Service] RuntimeDirectory"] == ["archip"])
        #expect(u["[Service] RuntimeDirectoryMode"] == ["0700"])
        #expect(u["[Service] RuntimeDirectoryPreserve"] == ["yes"], "crash recovery reads holds.json from it")
        #expect(u["[Install] WantedBy"] == ["multi-user.target"])
        let exec = try SystemdUnit.execStart()
        #expect(exec.first == "/usr/bin/archip", "make install rewrites this path to $(BINDIR)/archip")
        #expect(Array(exec.dropFirst().prefix(1)) == ["serve"])
        if let i = exec.firstIndex(of: "--runtime-dir") {
            #expect(exec[i + 1] == "/run/" + (u["[Service] RuntimeDirectory"]?.first ?? ""))
        }
        // Every option of ExecStart is one 'archip serve' documents.
        let help = try CLI().run(["serve", "--help"], withStore: false)
        #expect(help.status == 0)
        for opt in exec where opt.hasPrefix("--") {
            #expect(help.stdout.contains(opt), "archip serve --help does not list \(opt)")
        }
    }

    @Test func systemdAnalyzeVerifiesTheUnit() throws {
        guard (try? shell("command -v systemd-analyze"))?.status == 0 else {
            print("SKIP systemd-analyze verify: systemd-analyze is not installed")
            return
        }
        // The unit as installed with BINDIR = the build folder (make install's rewrite).
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-unit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = try String(contentsOfFile: SystemdUnit.unitPath, encoding: .utf8)
            .replacingOccurrences(of: "/usr/bin/archip", with: CLI.binDir + "/archip")
        try text.write(toFile: dir + "/archip-serve.service", atomically: true, encoding: .utf8)
        let r = try shell("cd \(dir) && systemd-analyze verify --man=no ./archip-serve.service 2>&1")
        // verify exits 0 on unknown keys and bad values too: any output is a finding.
        #expect(r.status == 0 && r.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(r.out)")
    }

    @Test func sigtermFromSystemdDetachesEverythingAndExitsZero() throws {
        if skipDataPath("systemd stop of archip serve") { return }
        let cli = CLI()
        let runtime = cli.store + "-run-unit"
        try cli.run(["create", "v", "--size", "32M"])
        // Start the daemon exactly as the unit's ExecStart does (runtime folder moved).
        var args = Array(try SystemdUnit.execStart().dropFirst())
        if let i = args.firstIndex(of: "--runtime-dir") { args[i + 1] = runtime } else { args += ["--runtime-dir", runtime] }
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binDir + "/archip")
        p.arguments = args
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
        env["ARCHIP_STORE"] = cli.store
        env["ARCHIP_NODE"] = "unit-node"
        env["ARCHIP_CONFIG"] = nil
        p.environment = env
        // A file, not a pipe: nothing here waits for the daemon's descriptors.
        _ = FileManager.default.createFile(atPath: runtime + ".log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: runtime + ".log"))
        p.standardOutput = log
        p.standardError = log
        p.standardInput = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        let node = ["ARCHIP_NODE": "unit-node", "ARCHIP_RUNTIME_DIR": runtime]
        var up = false
        for _ in 0..<100 where !up {
            up = (try? cli.run(["attached"], env: node))?.status == 0 && FileManager.default.fileExists(atPath: runtime + "/control.sock")
            if !up { usleep(50_000) }
        }
        #expect(up, "the daemon did not come up")
        let attach = try cli.run(["attach", "v"], env: node)
        #expect(attach.status == 0, "\(attach.stderr)")
        let lines = attach.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count == 2)
        #expect(try shell("qemu-io -f raw -c 'write -P 0x3c 0 1M' '\(lines[1])'").status == 0)   // no flush: the stop must flush
        let loopName = (lines[0] as NSString).lastPathComponent
        #expect(FileManager.default.fileExists(atPath: "/sys/block/\(loopName)/loop/backing_file"))

        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<200 where p.isRunning { usleep(50_000) }
        #expect(!p.isRunning, "archip serve did not stop on SIGTERM")
        #expect(p.terminationReason == .exit && p.terminationStatus == 0,
                "a clean stop must exit 0 (or Restart=on-failure restarts it): \(p.terminationReason) \(p.terminationStatus)")
        // Another test running in parallel may take the freed minor at once:
        // only a device still bound to this daemon's file is a leak.
        // A device still bound to this daemon's file shows its path, or just
        // "/v" once the FUSE mount under it is gone (which no test may leave).
        let backing = ((try? String(contentsOfFile: "/sys/block/\(loopName)/loop/backing_file", encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!backing.hasPrefix(runtime + "/") && backing != "/v", "loop device left attached: \(backing)")
        // Read to the end: Foundation stops /proc files at 4 KiB (procfs says size 0).
        let mounts = (try? FileHandle(forReadingAtPath: "/proc/self/mounts")?.readToEnd()).flatMap { $0.map { String(decoding: $0, as: UTF8.self) } } ?? ""
        #expect(!mounts.contains(runtime + "/mnt"), "FUSE mount left behind")
        let info = try JSONSerialization.jsonObject(with: try cli.run(["info", "v", "--json"]).stdoutData) as! [String: Any]
        #expect(info["lock"] == nil || info["lock"] is NSNull, "lock not released")
        #expect(try cli.run(["read", "v", "--length", "4"]).stdoutData == Data([0x3c, 0x3c, 0x3c, 0x3c]), "unflushed writes lost")
    }
}

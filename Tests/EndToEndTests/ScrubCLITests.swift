import ArchipStore
import ArchipTestSupport
import Foundation
import Testing

/// `archip verify --all` and `archip repair` as an operator runs them, and
/// the scrub's systemd units (issue 16, section 3).
@Suite struct CLIScrub {
    /// CLICheckedReads' store (v, its hashed snapshot s, clone vc) plus clones vc2, vc3.
    static func prepare(_ cli: CLI) throws -> ([UInt8], String) {
        let (image, block) = try CLICheckedReads.prepare(cli)
        for c in ["vc2", "vc3"] { #expect(try cli.run(["clone", "s", c]).status == 0) }
        return (image, block)
    }

    static func flip(_ path: String, at offset: UInt64) throws {
        let fh = try #require(FileHandle(forUpdatingAtPath: path))
        defer { try? fh.close() }
        try fh.seek(toOffset: offset)
        let b = try #require(try fh.read(upToCount: 1))
        try fh.seek(toOffset: offset)
        try fh.write(contentsOf: Data([b[0] ^ 0x5A]))
    }

    static func jsonLines(_ text: String) throws -> [[String: Any]] {
        try text.split(separator: "\n").map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
    }

    @Test func verifyAllNamesEveryReferrerAndExitsOne() throws {
        let cli = CLI()
        let (_, block) = try CLIScrub.prepare(cli)
        let clean = try cli.run(["verify", "--all"])
        #expect(clean.status == 0, "\(clean.stdout) \(clean.stderr)")
        #expect(clean.stdout.contains("0 damaged, 0 missing"))

        try CLIScrub.flip(block, at: 4096)
        let obj = String(block.dropFirst(cli.store.count + 1))
        let r = try cli.run(["verify", "--all", "--jobs", "2"])
        #expect(r.status == 1, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("DAMAGED content \(obj)"))
        // Block 2 (bytes 8-12 MiB) of every name that reads it.
        for n in ["volume v", "snapshot s", "volume vc", "volume vc2", "volume vc3"] {
            #expect(r.stdout.contains("  \(n): bytes 8388608-12582911"), "\(n) missing from: \(r.stdout)")
        }

        let j = try cli.run(["verify", "--all", "--json"])
        #expect(j.status == 1)
        let lines = try CLIScrub.jsonLines(j.stdout)
        #expect(lines.count == 2)
        #expect(lines.first?["type"] as? String == "damaged" && lines.first?["object"] as? String == obj)
        #expect((lines.first?["references"] as? [Any])?.count == 5)
        #expect(lines.last?["type"] as? String == "summary" && lines.last?["damaged"] as? Int == 1 && lines.last?["ok"] as? Bool == false)

        // Bad usage: exit 2, one line.
        expectOneLineError(try cli.run(["verify"]), status: 2, "verify without a scope")
        expectOneLineError(try cli.run(["verify", "--all", "vc"]), status: 2, "--all with a name")
        expectOneLineError(try cli.run(["verify", "--all", "--max-rate", "fast"]), status: 2, mentioning: "fast", "a bad rate")
        expectOneLineError(try cli.run(["repair", "--all"]), status: 2, "repair without a source")
    }

    /// A SIGKILLed run leaves its checkpoint; the next run goes on from it.
    @Test func killedRunResumes() throws {
        let cli = CLI()
        let src = cli.store + "-img"
        #expect(try shell("head -c 16M /dev/urandom > '\(src)'").status == 0)
        #expect(try cli.run(["create", "v", "--size", "16M", "--block-size", "64K"]).status == 0)
        #expect(try cli.run(["import", "v", src]).status == 0)
        #expect(try cli.run(["snapshot", "v", "s"]).status == 0)
        #expect(try cli.run(["hash", "s"]).status == 0)
        // 256 objects of 64 KiB at 2 MiB/s: 8 s; killed after 3.5 s (checkpoints every 2 s).
        let killed = try cli.run(["verify", "--all", "--max-rate", "2M", "--jobs", "1"], under: ["/usr/bin/timeout", "-s", "KILL", "3.5"])
        // timeout(1) dies of the same signal: Foundation reports the signal's number.
        #expect(killed.status == 9 || killed.status == 137, "\(killed.stdout) \(killed.stderr)")
        #expect(FileManager.default.fileExists(atPath: cli.store + "/scrub/checkpoint"))
        let r = try cli.run(["verify", "--all", "--json"])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let summary = try #require(try CLIScrub.jsonLines(r.stdout).last)
        #expect(summary["resumed"] as? Bool == true)
        let before = summary["objects_checked_before"] as? Int ?? 0
        #expect(before >= 32 && before < 256, "checked before the kill: \(before)")
        #expect(summary["objects_checked"] as? Int == 256)
        #expect(!FileManager.default.fileExists(atPath: cli.store + "/scrub/checkpoint"))
        // --restart starts over.
        let again = try CLIScrub.jsonLines(try cli.run(["verify", "--all", "--json", "--restart"]).stdout).last
        #expect(again?["resumed"] as? Bool == false)
    }

    @Test func repairFromImageAndHashmap() throws {
        let cli = CLI()
        let (image, block) = try CLIScrub.prepare(cli)
        let hashmap = cli.store + "-hashmap.json"
        #expect(try cli.run(["hash", "s", "--hashmap-out", hashmap]).status == 0)
        try CLIScrub.flip(block, at: 100)
        let img = cli.store + "-img"   // written by prepare
        let dry = try cli.run(["repair", "--all", "--from-image", img, "--hashmap", hashmap, "--dry-run"])
        #expect(dry.status == 0 && dry.stdout.contains("WOULD RESTORE"), "\(dry.stdout) \(dry.stderr)")
        #expect(try cli.run(["verify", "--all"]).status == 1)
        let metrics = cli.store + "-repair.prom"
        let r = try cli.run(["repair", "--all", "--from-image", img, "--hashmap", hashmap, "--metrics", metrics])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("RESTORED content"))
        #expect(try String(contentsOfFile: metrics, encoding: .utf8).contains("archip_scrub_repaired_objects{"))
        #expect(try cli.run(["verify", "--all"]).status == 0)
        let read = try cli.run(["read", "vc2", "--offset", "8M", "--length", "4M"])
        #expect(Array(read.stdoutData) == Array(image[(8 << 20)..<(12 << 20)]))

        // A source with other bytes under the name is refused; nothing is written.
        try CLIScrub.flip(block, at: 100)
        let damaged = FileManager.default.contents(atPath: block)
        let wrong = cli.store + "-wrong"
        let rel = String(block.dropFirst(cli.store.count + "/blocks/".count))
        try FileManager.default.createDirectory(atPath: wrong + "/" + (rel as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: wrong + "/" + rel, contents: Data(repeating: 7, count: 4096))
        let refused = try cli.run(["repair", "--all", "--from", wrong])
        #expect(refused.status == 1 && refused.stdout.contains("refused: block folder \(wrong)"), "\(refused.stdout)")
        #expect(FileManager.default.contents(atPath: block) == damaged)
    }

    @Test func scheduledRunFollowsTheScrubSection() throws {
        let cli = CLI()
        _ = try CLIScrub.prepare(cli)
        let conf = cli.store + "-archip.conf"
        let metrics = cli.store + "-scrub.prom"
        // The sample's [scrub] section: off.
        let sample = try String(contentsOfFile: SystemdUnit.repoRoot.appendingPathComponent("docs/archip.conf.sample").path, encoding: .utf8)
        try sample.replacingOccurrences(of: "path = /srv/archip", with: "path = \(cli.store)").write(toFile: conf, atomically: true, encoding: .utf8)
        let off = try cli.run(["verify", "--all", "--scheduled", "--config", conf, "--metrics", metrics], withStore: false)
        #expect(off.status == 0 && off.stderr.contains("scrub is off"), "\(off.stderr)")
        #expect(!FileManager.default.fileExists(atPath: metrics))

        try "[store]\npath = \(cli.store)\n[scrub]\nenabled = true\nmax_rate = 1G\njobs = 2\nmetrics = \(metrics)\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        let on = try cli.run(["verify", "--all", "--scheduled", "--config", conf], withStore: false)
        #expect(on.status == 0, "\(on.stdout) \(on.stderr)")
        let text = try String(contentsOfFile: metrics, encoding: .utf8)
        #expect(text.contains("archip_scrub_objects_checked{store=\"\(cli.store)\"} 4"))
        #expect(text.contains("archip_scrub_damaged_objects{"))
        #expect(text.contains("# TYPE archip_scrub_last_end_timestamp_seconds gauge"))
    }

    /// `--attached`: the volumes this node's daemon holds, and only those,
    /// checked while the daemon holds them open.
    @Test func attachedChecksWhatTheDaemonHolds() throws {
        if DaemonResilience.skip("verify --attached") { return }
        let cli = CLI()
        for n in ["held", "other"] {
            try cli.run(["create", n, "--size", "8M"])
            let w = try cli.run(["write", n, "--offset", "0"], stdin: Data((0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7) }))
            #expect(w.status == 0, "\(w.stderr)")
        }
        let d = try DaemonResilience.RunningDaemon(cli)
        defer { d.stop() }
        _ = try d.attach("held")
        func owned(_ n: String) throws -> String {
            let info = try #require(try JSONSerialization.jsonObject(with: try cli.run(["info", n, "--json"]).stdoutData) as? [String: Any])
            return cli.store + "/layers/\(info["layer"] as? String ?? "")/b00000000"
        }
        // Damage the volume nobody holds: not in --attached's scope.
        try CLIScrub.flip(try owned("other"), at: 100)
        let r = try d.run(["verify", "--attached", "--json"])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let summary = try CLIScrub.jsonLines(r.stdout).last
        #expect(summary?["names"] as? Int == 1 && (summary?["held_open"] as? [String]) == ["held"], "\(r.stdout)")
        // Damage the held one: found while the daemon holds it.
        try CLIScrub.flip(try owned("held"), at: 100)
        let bad = try d.run(["verify", "--attached", "--restart"])
        #expect(bad.status == 1 && bad.stdout.contains("volume held"), "\(bad.stdout) \(bad.stderr)")
        #expect(d.alive)
    }

    @Test func attachedWithoutADaemonSaysSo() throws {
        let cli = CLI()
        #expect(try cli.run(["create", "v", "--size", "8M"]).status == 0)
        let runtime = cli.store + "-run"
        let r = try cli.run(["verify", "--attached", "--runtime-dir", runtime])
        #expect(r.status == 0 && r.stderr.contains("no node daemon runs here") && r.stdout.isEmpty, "\(r.status) \(r.stderr)")
    }

    // MARK: systemd units

    static func unitText(_ name: String) throws -> String {
        try String(contentsOfFile: SystemdUnit.repoRoot.appendingPathComponent("packaging/systemd/\(name)").path, encoding: .utf8)
    }

    @Test func scrubUnitsAreValidAndNameRealOptions() throws {
        let service = SystemdUnit.parse(try CLIScrub.unitText("archip-scrub.service"))
        let timer = SystemdUnit.parse(try CLIScrub.unitText("archip-scrub.timer"))
        #expect(service["[Service] Type"] == ["oneshot"])
        #expect(timer["[Install] WantedBy"] == ["timers.target"])
        #expect(timer["[Timer] OnCalendar"]?.isEmpty == false)
        let exec = try #require(service["[Service] ExecStart"]?.first).split(separator: " ").map(String.init)
        #expect(exec.first == "/usr/bin/archip" && exec.dropFirst().first == "verify")
        let help = try CLI().run(["verify", "--help"], withStore: false)
        for opt in exec where opt.hasPrefix("--") {
            #expect(help.stdout.contains(opt), "archip verify --help does not list \(opt)")
        }
        guard (try? shell("command -v systemd-analyze"))?.status == 0 else {
            print("SKIP systemd-analyze verify (scrub units): systemd-analyze is not installed")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("archip-scrub-unit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for u in ["archip-scrub.service", "archip-scrub.timer"] {
            try CLIScrub.unitText(u).replacingOccurrences(of: "/usr/bin/archip", with: CLI.binDir + "/archip")
                .write(toFile: dir + "/" + u, atomically: true, encoding: .utf8)
        }
        let r = try shell("cd \(dir) && systemd-analyze verify --man=no ./archip-scrub.service ./archip-scrub.timer 2>&1")
        #expect(r.status == 0 && r.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(r.out)")
    }
}

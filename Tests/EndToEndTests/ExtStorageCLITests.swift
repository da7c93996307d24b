import ArchipTestSupport
import Foundation
import Testing

/// Runs the provider binary exactly as Ganeti runs a script: no arguments but
/// the action, an environment of only PATH, LC_ALL and Ganeti's variables.
struct ProviderRun {
    let cli: CLI
    let config: String
    let runtime: String
    /// The folder `[fill] image_dirs` names: the only place file: origins may come from.
    let imageDir: String

    init(node: String = "node-a", cli: CLI = CLI(), storePath: String? = nil, fill: String? = nil) throws {
        self.cli = cli
        try? FileManager.default.createDirectory(atPath: cli.store, withIntermediateDirectories: true)
        _ = try cli.run(["init"])   // an empty folder becomes a store
        let dir = cli.store + "-" + node
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        runtime = dir + "/run"
        config = dir + "/archip.conf"
        imageDir = dir + "/images"
        try FileManager.default.createDirectory(atPath: imageDir, withIntermediateDirectories: true)
        try "[store]\npath = \(storePath ?? cli.store)\n[node]\nname = \(node)\nruntime_dir = \(runtime)\n[fill]\n\(fill ?? "image_dirs = \(imageDir)")\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
    }

    @discardableResult
    func call(_ action: String, _ vars: [String: String], args: [String]? = nil) throws -> CLI.Result {
        try CLI.runProvider(args ?? ["--config", config, action], env: vars)
    }

    /// Ganeti's variables for a disk of provider archipelago.
    static func vars(_ name: String, _ extra: [String: String] = [:]) -> [String: String] {
        var v = ["VOL_NAME": name, "EXTP_PROVIDER": "archipelago", "EXTP_ACCESS": "kernelspace"]
        for (k, x) in extra { v[k] = x }
        return v
    }

    /// Stops the node daemon a call started (an attach starts one on demand).
    func stopDaemon() {
        guard let text = try? String(contentsOfFile: runtime + "/serve.pid", encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0 else { return }
        kill(pid, SIGTERM)
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(50_000) }
    }

    func info(_ name: String) throws -> [String: Any]? {
        let r = try cli.run(["info", name, "--json"])
        guard r.status == 0 else { return nil }
        return try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any]
    }
}

/// A failed call: one line on stderr naming the action and what went wrong, the given status.
func expectProviderFailure(_ r: CLI.Result, status: Int32, mentioning: String, _ what: String) {
    #expect(r.status == status, "\(what): exit \(r.status), stderr: \(r.stderr)")
    let lines = r.stderr.split(separator: "\n")
    #expect(lines.count == 1, "\(what): stderr should be one line: \(r.stderr)")
    #expect(r.stderr.hasPrefix("archip-extstorage: "), "\(what): \(r.stderr)")
    #expect(r.stderr.contains(mentioning), "\(what): '\(r.stderr)' should mention \(mentioning)")
    #expect(r.stdout.isEmpty, "\(what): nothing on stdout")
}

@Suite struct ExtStorageCLI {
    let vol = "0b1c2d3e-1111-2222-3333-444455556666.ext.disk0"

    @Test func usageForHelpAndUnexpectedArguments() throws {
        let p = try ProviderRun()
        for args in [["--help"], ["-h"], ["create", "--help"], ["create", "extra"], [], ["frobnicate"], ["--config"]] {
            let r = try p.call("", [:], args: args)
            #expect(r.status == 2, "\(args): exit \(r.status)")
            #expect(r.stderr.contains("usage: archip-extstorage"), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        // The installed shims pass their own arguments through: a script called with one fails the same way.
        let dest = p.cli.store + "-provider/archipelago"
        let inst = try shell("\(repoRoot)/scripts/install-extstorage.sh '\(dest)' '\(CLI.binDir)' '\(p.config)'")
        #expect(inst.status == 0, "\(inst.out)")
        for action in ["create", "attach", "detach", "remove", "grow", "setinfo", "verify", "snapshot", "open", "close"] {
            let st = try shell("test -x '\(dest)/\(action)' && '\(dest)/\(action)' --bogus 2>&1")
            #expect(st.status == 2 && st.out.contains("usage:"), "\(action): \(st.status) \(st.out)")
        }
        #expect(FileManager.default.fileExists(atPath: dest + "/parameters.list"))
    }

    @Test func badInputIsOneLineAndChangesNothing() throws {
        let p = try ProviderRun()
        defer { p.stopDaemon() }
        #expect(try p.cli.run(["create", "img", "--size", "8M"]).status == 0)
        #expect(try p.cli.run(["snapshot", "img", "img-v1"]).status == 0)
        let before = p.cli.snapshotOfFiles()
        let cases: [(String, [String: String], Int32, String)] = [
            ("missing VOL_NAME", ["VOL_SIZE": "64"], 2, "VOL_NAME is not set"),
            ("empty VOL_NAME", ["VOL_NAME": "", "VOL_SIZE": "64"], 2, "VOL_NAME is empty"),
            ("VOL_NAME with ../", ["VOL_NAME": "../../etc/x", "VOL_SIZE": "64"], 2, "VOL_NAME"),
            ("VOL_NAME with /", ["VOL_NAME": "a/b.ext.disk0", "VOL_SIZE": "64"], 2, "VOL_NAME"),
            ("VOL_SIZE abc", ["VOL_NAME": vol, "VOL_SIZE": "abc"], 2, "VOL_SIZE 'abc'"),
            ("VOL_SIZE -5", ["VOL_NAME": vol, "VOL_SIZE": "-5"], 2, "VOL_SIZE '-5'"),
            ("VOL_SIZE empty", ["VOL_NAME": vol, "VOL_SIZE": ""], 2, "VOL_SIZE ''"),
            ("VOL_SIZE 0", ["VOL_NAME": vol, "VOL_SIZE": "0"], 2, "VOL_SIZE '0'"),
            ("VOL_SIZE missing", ["VOL_NAME": vol], 2, "VOL_SIZE is not set"),
            ("unknown EXTP_", ["VOL_NAME": vol, "VOL_SIZE": "64", "EXTP_COLOUR": "red"], 2, "EXTP_COLOUR"),
            ("origin that does not exist", ["VOL_NAME": vol, "VOL_SIZE": "64", "EXTP_ORIGIN": "snapshot:nope"], 1, "nope"),
            ("origin file that does not exist", ["VOL_NAME": vol, "VOL_SIZE": "64", "EXTP_ORIGIN": "file:\(p.imageDir)/nonexistent.img"], 2, "nonexistent.img"),
            ("origin file outside image_dirs", ["VOL_NAME": vol, "VOL_SIZE": "64", "EXTP_ORIGIN": "file:/nonexistent/img"], 2, "/nonexistent/img"),
            ("malformed origin", ["VOL_NAME": vol, "VOL_SIZE": "64", "EXTP_ORIGIN": "ftp://x/y"], 2, "EXTP_ORIGIN"),
            ("origin larger than VOL_SIZE", ["VOL_NAME": vol, "VOL_SIZE": "4", "EXTP_ORIGIN": "snapshot:img-v1"], 2, "img-v1"),
        ]
        for (what, extra, status, mention) in cases {
            var v = ProviderRun.vars(vol)
            v["VOL_NAME"] = nil
            for (k, x) in extra { v[k] = x }
            let r = try p.call("create", v)
            expectProviderFailure(r, status: status, mentioning: mention, what)
            #expect(p.cli.snapshotOfFiles() == before, "\(what): the store changed")
        }
        // Other actions with a bad name or size.
        expectProviderFailure(try p.call("grow", ProviderRun.vars(vol, ["VOL_SIZE": "64", "VOL_NEW_SIZE": "x"])), status: 2, mentioning: "VOL_NEW_SIZE", "grow")
        expectProviderFailure(try p.call("attach", ["VOL_NAME": "../x"]), status: 2, mentioning: "VOL_NAME", "attach ../x")
        expectProviderFailure(try p.call("attach", ProviderRun.vars("missing.ext.disk0")), status: 1, mentioning: "does not exist", "attach of a missing volume")
        #expect(!FileManager.default.fileExists(atPath: p.runtime + "/control.sock"), "no daemon was started for a missing volume")
        expectProviderFailure(try p.call("snapshot", ProviderRun.vars(vol)), status: 2, mentioning: "VOL_SNAPSHOT_NAME", "snapshot")
        expectProviderFailure(try p.call("open", ProviderRun.vars(vol, ["VOL_OPEN_EXCLUSIVE": "maybe"])), status: 2, mentioning: "VOL_OPEN_EXCLUSIVE", "open")
        expectProviderFailure(try p.call("setinfo", ProviderRun.vars(vol)), status: 2, mentioning: "VOL_METADATA", "setinfo")
        #expect(p.cli.snapshotOfFiles() == before, "the store changed")
    }

    @Test func configurationProblemsAreOneLine() throws {
        let p = try ProviderRun()
        let missing = try p.call("", ProviderRun.vars(vol), args: ["--config", "/nonexistent/archip.conf", "verify"])
        expectProviderFailure(missing, status: 1, mentioning: "/nonexistent/archip.conf", "missing config")
        let q = try ProviderRun(node: "node-q", storePath: "/nonexistent/store")
        expectProviderFailure(try q.call("verify", ProviderRun.vars(vol)), status: 1, mentioning: "not reachable", "unreachable store")
        expectProviderFailure(try q.call("create", ProviderRun.vars(vol, ["VOL_SIZE": "8"])), status: 1, mentioning: "not reachable", "create on an unreachable store")
        #expect(!FileManager.default.fileExists(atPath: "/nonexistent/store"))
    }

    @Test func createRecreateSetinfoGrowSnapshotRemove() throws {
        let p = try ProviderRun()
        let v = ProviderRun.vars(vol, ["VOL_SIZE": "64", "VOL_UUID": "uuid-1", "VOL_CNAME": "snf-vol-42"])
        let c = try p.call("create", v)
        #expect(c.status == 0, "\(c.stderr)")
        #expect(c.stdout.isEmpty)
        #expect(c.stderr.contains("create \(vol): ok in"), "one log line per call: \(c.stderr)")
        var info = try #require(try p.info(vol))
        #expect(info["size"] as? Int == 64 << 20)
        let meta = info["metadata"] as? [String: String] ?? [:]
        #expect(meta["ganeti.uuid"] == "uuid-1" && meta["ganeti.cname"] == "snf-vol-42")
        #expect(try p.cli.run(["write", vol, "--offset", "1M"], stdin: Data("keep me".utf8)).status == 0)

        // recreate-disks: the same disk finds its data; another disk is refused.
        #expect(try p.call("create", v).status == 0)
        #expect(try p.cli.run(["read", vol, "--offset", "1M", "--length", "7"]).stdout == "keep me")
        let other = try p.call("create", ProviderRun.vars(vol, ["VOL_SIZE": "64", "VOL_UUID": "uuid-2"]))
        expectProviderFailure(other, status: 1, mentioning: "already exists", "create over another disk's volume")
        #expect(try p.cli.run(["read", vol, "--offset", "1M", "--length", "7"]).stdout == "keep me")

        #expect(try p.call("setinfo", ProviderRun.vars(vol, ["VOL_METADATA": "originstname+vm1.example.org"])).status == 0)
        info = try #require(try p.info(vol))
        #expect((info["metadata"] as? [String: String])?["ganeti.info"] == "originstname+vm1.example.org")

        // grow (not attached), and again: a retried grow is a no-op.
        let g = ProviderRun.vars(vol, ["VOL_SIZE": "64", "VOL_NEW_SIZE": "128"])
        #expect(try p.call("grow", g).status == 0)
        #expect(try p.call("grow", g).status == 0)
        #expect(try p.info(vol)?["size"] as? Int == 128 << 20)

        // snapshot, then a create from it with EXTP_ORIGIN (a clone, grown to VOL_SIZE).
        let s = try p.call("snapshot", ProviderRun.vars(vol, ["VOL_SNAPSHOT_NAME": vol + ".snap", "VOL_SNAPSHOT_SIZE": "128"]))
        #expect(s.status == 0, "\(s.stderr)")
        #expect(try p.info(vol + ".snap")?["kind"] as? String == "snapshot")
        let clone = "11111111-2222-3333-4444-555555555555.ext.disk0"
        let cc = try p.call("create", ProviderRun.vars(clone, ["VOL_SIZE": "256", "EXTP_ORIGIN": "snapshot:\(vol).snap", "VOL_UUID": "uuid-3"]))
        #expect(cc.status == 0, "\(cc.stderr)")
        #expect(cc.stderr.contains("cloned"), "\(cc.stderr)")
        #expect(try p.info(clone)?["size"] as? Int == 256 << 20)
        #expect(try p.cli.run(["read", clone, "--offset", "1M", "--length", "7"]).stdout == "keep me")

        // EXTP_ORIGIN arrives on every call and is ignored outside create.
        #expect(try p.call("setinfo", ProviderRun.vars(clone, ["VOL_METADATA": "x", "EXTP_ORIGIN": "snapshot:gone"])).status == 0)

        // remove: refused while held, a snapshot with clones refused, missing is success.
        #expect(try p.cli.run(["lock", clone, "--node", "node-b"]).status == 0)
        expectProviderFailure(try p.call("remove", ProviderRun.vars(clone)), status: 1, mentioning: "node-b", "remove of a held volume")
        #expect(try p.info(clone) != nil)
        #expect(try p.cli.run(["unlock", clone, "--force"]).status == 0)
        expectProviderFailure(try p.call("remove", ProviderRun.vars(vol + ".snap")), status: 1, mentioning: "clone", "remove of a snapshot with clones")
        #expect(try p.call("remove", ProviderRun.vars(clone)).status == 0)
        #expect(try p.call("remove", ProviderRun.vars(vol + ".snap")).status == 0)
        #expect(try p.call("remove", ProviderRun.vars(vol)).status == 0)
        #expect(try p.call("remove", ProviderRun.vars(vol)).status == 0, "removing a missing volume succeeds")
        #expect(try p.info(vol) == nil)
        // detach and close of something never attached succeed (no daemon is even started).
        #expect(try p.call("detach", ProviderRun.vars(vol)).status == 0)
        #expect(try p.call("close", ProviderRun.vars(vol)).status == 0)
        #expect(!FileManager.default.fileExists(atPath: p.runtime + "/control.sock"))
    }

    @Test func createFillsFromAFileOrigin() throws {
        let p = try ProviderRun()
        let image = p.imageDir + "/image.raw"
        var bytes = [UInt8](repeating: 0, count: 9 << 20)
        for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] = UInt8(truncatingIfNeeded: i >> 12) | 1 }
        try Data(bytes).write(to: URL(fileURLWithPath: image))
        let r = try p.call("create", ProviderRun.vars(vol, ["VOL_SIZE": "16", "EXTP_ORIGIN": "file:\(image)"]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("filled from file:\(image)"), "\(r.stderr)")
        let out = p.cli.store + "-export.raw"
        #expect(try p.cli.run(["export", vol, out]).status == 0)
        let exported = try Data(contentsOf: URL(fileURLWithPath: out))
        #expect(exported.count == 16 << 20)
        #expect(exported.prefix(bytes.count) == Data(bytes))
        #expect(exported.suffix(from: bytes.count).allSatisfy { $0 == 0 })
        // An image larger than VOL_SIZE is refused, and nothing appears.
        let big = "22222222-2222-3333-4444-555555555555.ext.disk0"
        expectProviderFailure(try p.call("create", ProviderRun.vars(big, ["VOL_SIZE": "4", "EXTP_ORIGIN": "file:\(image)"])),
                              status: 2, mentioning: "larger", "an image larger than VOL_SIZE")
        #expect(try p.info(big) == nil)
    }

    @Test func verifyChecksParametersOriginAndStore() throws {
        let p = try ProviderRun()
        #expect(try p.cli.run(["create", "img", "--size", "8M"]).status == 0)
        #expect(try p.cli.run(["snapshot", "img", "img-v1"]).status == 0)
        #expect(try p.call("verify", ProviderRun.vars(vol)).status == 0)
        #expect(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "snapshot:img-v1"])).status == 0)
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "snapshot:img"])), status: 2, mentioning: "is a volume", "verify snapshot: of a volume")
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "snapshot:none"])), status: 2, mentioning: "does not exist", "verify missing origin")
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "gopher:x"])), status: 2, mentioning: "EXTP_ORIGIN", "verify malformed origin")
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_SIZE": "1"])), status: 2, mentioning: "EXTP_SIZE", "verify unknown parameter")
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ACCESS": "warpspace"])), status: 2, mentioning: "EXTP_ACCESS", "verify bad access")
        expectProviderFailure(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "pithos:/nonexistent.json"])), status: 2, mentioning: "hashmap", "verify pithos")
    }

    /// file: origins and local pithos: hashmaps come only from [fill] image_dirs, as
    /// readable regular files; verify refuses what create would refuse, in one line,
    /// and nothing reaches the store.
    @Test func localOriginsOnlyFromImageDirs() throws {
        let p = try ProviderRun()
        let image = p.imageDir + "/image.raw"
        try Data(repeating: 7, count: 1 << 20).write(to: URL(fileURLWithPath: image))
        try FileManager.default.createDirectory(atPath: p.imageDir + "/folder", withIntermediateDirectories: true)
        // A file anyone can read, outside the image folder, and ways to reach it from inside.
        let secret = p.cli.store + "-secret.raw"
        try Data(repeating: 9, count: 1 << 20).write(to: URL(fileURLWithPath: secret))
        try FileManager.default.createSymbolicLink(atPath: p.imageDir + "/link.raw", withDestinationPath: secret)
        try FileManager.default.createSymbolicLink(atPath: p.imageDir + "/zero.raw", withDestinationPath: "/dev/zero")
        #expect(try p.call("verify", ProviderRun.vars(vol, ["EXTP_ORIGIN": "file:\(image)"])).status == 0)
        let before = p.cli.snapshotOfFiles()
        let refused: [(String, String, String)] = [
            ("a file outside image_dirs", "file:\(secret)", "not under [fill] image_dirs"),
            ("/etc/shadow", "file:/etc/shadow", "not under [fill] image_dirs"),
            ("/dev/zero", "file:/dev/zero", "not under [fill] image_dirs"),
            ("../ out of the image folder", "file:\(p.imageDir)/../../\((secret as NSString).lastPathComponent)", "not under [fill] image_dirs"),
            ("a symlink out of the image folder", "file:\(p.imageDir)/link.raw", "leads to \(secret)"),
            ("a symlink to /dev/zero", "file:\(p.imageDir)/zero.raw", "leads to /dev/zero"),
            ("a folder", "file:\(p.imageDir)/folder", "is a folder"),
            ("a relative path", "file:./image.raw", "not under [fill] image_dirs"),
            ("a pithos hashmap outside image_dirs", "pithos:\(secret)", "hashmap"),
        ]
        for (what, origin, mention) in refused {
            for action in ["verify", "create"] {
                let r = try p.call(action, ProviderRun.vars(vol, ["VOL_SIZE": "4", "EXTP_ORIGIN": origin]))
                expectProviderFailure(r, status: 2, mentioning: mention, "\(action) from \(what)")
            }
        }
        #expect(p.cli.snapshotOfFiles() == before, "a refused origin changed the store")
        // Without image_dirs no local file is accepted, not even one in the folder.
        let none = try ProviderRun(node: "node-b", cli: p.cli, fill: "")
        for action in ["verify", "create"] {
            expectProviderFailure(try none.call(action, ProviderRun.vars(vol, ["VOL_SIZE": "4", "EXTP_ORIGIN": "file:\(image)"])),
                                  status: 2, mentioning: "no [fill] image_dirs", "\(action) without image_dirs")
        }
        #expect(p.cli.snapshotOfFiles() == before)
        // What verify passed, create reads.
        let r = try p.call("create", ProviderRun.vars(vol, ["VOL_SIZE": "4", "EXTP_ORIGIN": "file:\(image)"]))
        #expect(r.status == 0, "\(r.stderr)")
    }

    /// Ganeti upper-cases parameter names: EXTP_origin is a typo, refused, not ignored.
    @Test func lowerCaseParametersAreRefused() throws {
        let p = try ProviderRun()
        #expect(try p.cli.run(["create", "img", "--size", "8M"]).status == 0)
        #expect(try p.cli.run(["snapshot", "img", "img-v1"]).status == 0)
        let before = p.cli.snapshotOfFiles()
        for action in ["verify", "create"] {
            let r = try p.call(action, ProviderRun.vars(vol, ["VOL_SIZE": "16", "EXTP_origin": "snapshot:img-v1"]))
            expectProviderFailure(r, status: 2, mentioning: "EXTP_origin", "\(action) with EXTP_origin")
            #expect(r.stderr.contains("EXTP_ORIGIN"), "names what was meant: \(r.stderr)")
        }
        #expect(p.cli.snapshotOfFiles() == before, "nothing was created")
    }
}

let repoRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()


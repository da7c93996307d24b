import ArchipTestSupport
import Foundation
import Testing

/// Runs the real `archip` binary, as an operator or a script would.
struct CLI {
    static let binDir: String = {
        if let d = ProcessInfo.processInfo.environment["ARCHIP_BIN_DIR"] { return d }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // .build/<triple>/debug/<package>PackageTests.xctest
        return exe.deletingLastPathComponent().path
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var stdoutData: Data
    }

    let store: String

    init() {
        store = FileManager.default.temporaryDirectory.appendingPathComponent("archip-cli-\(UUID().uuidString)").path
        // The store and the `<store>-run-*` runtime folders are this process's:
        // if it is killed, the next run stops their daemons (TestDaemons).
        try? TestDaemons.register(root: store)
    }

    /// Runs archip with `args`; `under` runs it through another program
    /// first (`["/usr/bin/timeout", "-s", "KILL", "60"]`).
    @discardableResult
    func run(_ args: [String], stdin: Data? = nil, env: [String: String] = [:], withStore: Bool = true,
             under wrapper: [String] = []) throws -> Result {
        let p = Process()
        let command = wrapper + [CLI.binDir + "/archip"] + args
        p.executableURL = URL(fileURLWithPath: command[0])
        p.arguments = Array(command.dropFirst())
        // Nothing of the caller's archip settings (ARCHIP_NODE, ARCHIP_RUNTIME_DIR, ...
        // from an operator's shell) may reach the binary: only what the test sets.
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ARCHIP_") }
        environment["ARCHIP_STORE"] = withStore ? store : nil
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = inp
        try p.run()
        if let stdin { inp.fileHandleForWriting.write(stdin) }
        try inp.fileHandleForWriting.close()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self), stdoutData: o)
    }

    /// Every file in the store with its content digest: "nothing changed" means this is equal.
    /// Runs the ExtStorage provider as Ganeti does: `args` (usually
    /// `--config FILE ACTION`), only the given environment (Ganeti's EXTP_*
    /// and VOL_* variables) over an empty PATH, no stdin.
    static func runProvider(_ args: [String], env vars: [String: String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binDir + "/archip-extstorage")
        p.arguments = args
        p.environment = ["PATH": "/nonexistent", "LC_ALL": "C"].merging(vars) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self), stdoutData: o)
    }

    func snapshotOfFiles() -> [String: Data] {
        var out: [String: Data] = [:]
        guard let e = FileManager.default.enumerator(atPath: store) else { return out }
        while let f = e.nextObject() as? String {
            var isDir: ObjCBool = false
            let p = store + "/" + f
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue, !f.contains("/.") {
                out[f] = FileManager.default.contents(atPath: p)
            }
        }
        return out
    }
}

func expectOneLineError(_ r: CLI.Result, status: Int32, mentioning: String? = nil, _ what: String) {
    #expect(r.status == status, "\(what): exit \(r.status), stderr: \(r.stderr)")
    let lines = r.stderr.split(separator: "\n")
    #expect(lines.count == 1, "\(what): stderr should be one line: \(r.stderr)")
    #expect(r.stderr.hasPrefix("archip: "), "\(what): \(r.stderr)")
    if let mentioning { #expect(r.stderr.contains(mentioning), "\(what): '\(r.stderr)' should mention \(mentioning)") }
    #expect(r.stdout.isEmpty, "\(what): nothing on stdout")
}

@Suite struct CLIBadInput {
    @Test func malformedNamesAreRefusedAndChangeNothing() throws {
        let cli = CLI()
        try cli.run(["create", "keep", "--size", "8M"])
        let before = cli.snapshotOfFiles()
        let bad = ["../etc/passwd", "a/b", "..", ".", "", "x..y", ".hidden", String(repeating: "v", count: 129), "vol 1", "-x"]
        for n in bad {
            for cmd in [["create", n, "--size", "1G"], ["remove", n], ["info", n], ["snapshot", "keep", n],
                        ["clone", n, "c"], ["rename", "keep", n], ["verify", n]] {
                let r = try cli.run(cmd)
                #expect(r.status == 2, "\(cmd): exit \(r.status) \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(cmd): \(r.stderr)")
            }
        }
        #expect(cli.snapshotOfFiles() == before)
        #expect(!FileManager.default.fileExists(atPath: "/etc/passwd.archip"))
    }

    @Test func badSizesAreRefused() throws {
        let cli = CLI()
        try cli.run(["create", "keep", "--size", "8M"])
        let before = cli.snapshotOfFiles()
        for s in ["-1", "0", "1Q", "99999999T", "abc", "", "1.5G", "100"] {
            let r = try cli.run(["create", "v", "--size", s])
            expectOneLineError(r, status: 2, "size \(s)")
            let g = try cli.run(["resize", "keep", "--size", s])
            #expect(g.status == 2, "resize \(s): \(g.stderr)")
        }
        expectOneLineError(try cli.run(["resize", "keep", "--size", "4M"]), status: 2, mentioning: "--allow-shrink", "shrink")
        expectOneLineError(try cli.run(["create", "v", "--size", "1G", "--block-size", "3M"]), status: 2, "block size")
        #expect(cli.snapshotOfFiles() == before)
    }

    @Test func usageErrorsAndHelp() throws {
        let cli = CLI()
        #expect(try cli.run(["--help"]).status == 0)
        for sub in ["create", "remove", "rename", "list", "info", "resize", "snapshot", "clone", "flatten", "hash",
                    "verify", "lock", "unlock", "gc", "import", "export", "write", "read", "setinfo"] {
            let r = try cli.run([sub, "--help"])
            #expect(r.status == 0 && r.stdout.contains("USAGE"), "\(sub) --help")
        }
        expectOneLineError(try cli.run(["frobnicate"]), status: 2, "unknown command")
        expectOneLineError(try cli.run(["create", "v"]), status: 2, "missing --size")
        expectOneLineError(try cli.run(["list", "--bogus"]), status: 2, "unknown option")
        expectOneLineError(try cli.run(["list"], withStore: false), status: 2, mentioning: "--store", "no store")
        let notStore = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-store-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: notStore, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: notStore + "/precious", contents: Data("data".utf8)))
        expectOneLineError(try cli.run(["list", "--store", notStore]), status: 2, mentioning: "not an archip store", "foreign folder")
        #expect(FileManager.default.contents(atPath: notStore + "/precious") == Data("data".utf8))
    }

    @Test func failuresExitOne() throws {
        let cli = CLI()
        try cli.run(["init"])
        expectOneLineError(try cli.run(["info", "ghost"]), status: 1, mentioning: "ghost", "missing volume")
        try cli.run(["create", "v", "--size", "8M"])
        expectOneLineError(try cli.run(["create", "v", "--size", "8M"]), status: 1, mentioning: "already exists", "duplicate")
        expectOneLineError(try cli.run(["read", "v", "--offset", "8M", "--length", "1"]), status: 1, mentioning: "beyond the end", "read past end")
        expectOneLineError(try cli.run(["hash", "v"]), status: 1, mentioning: "snapshot", "hash a volume")
        // Held by another node: refused, naming the holder.
        let token = try cli.run(["lock", "v", "--node", "node-a"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!token.isEmpty)
        expectOneLineError(try cli.run(["write", "v", "--node", "node-b"], stdin: Data("x".utf8)), status: 1, mentioning: "node-a", "locked")
        expectOneLineError(try cli.run(["remove", "v", "--node", "node-b"]), status: 1, mentioning: "node-a", "remove locked")
        expectOneLineError(try cli.run(["unlock", "v", "--node", "node-b"]), status: 1, mentioning: "--force", "unlock other's")
        #expect(try cli.run(["unlock", "v", "--node", "node-a", "--token", token]).status == 0)
        #expect(try cli.run(["remove", "v", "--node", "node-b"]).status == 0)
        #expect(try cli.run(["remove", "v", "--if-exists"]).status == 0)
    }

    @Test func corruptionIsReported() throws {
        let cli = CLI()
        try cli.run(["create", "v", "--size", "16M"])
        try cli.run(["write", "v", "--offset", "0"], stdin: Data(repeating: 0x5A, count: 9 << 20))
        let info = try JSONSerialization.jsonObject(with: try cli.run(["info", "v", "--json"]).stdoutData) as! [String: Any]
        let layer = info["layer"] as! String
        #expect(try cli.run(["verify", "v"]).status == 0)
        try FileManager.default.removeItem(atPath: "\(cli.store)/layers/\(layer)/b00000001")
        let r = try cli.run(["verify", "v", "--json"])
        #expect(r.status == 1)
        let report = try JSONSerialization.jsonObject(with: r.stdoutData) as! [String: Any]
        let problems = report["problems"] as! [[String: Any]]
        #expect(problems.count == 1 && problems[0]["block"] as? Int == 1)
        let map = "\(cli.store)/layers/\(layer)/map"
        var bytes = [UInt8](FileManager.default.contents(atPath: map)!)
        bytes[60] ^= 0xFF
        #expect(FileManager.default.createFile(atPath: map, contents: Data(bytes)))
        expectOneLineError(try cli.run(["info", "v"]), status: 1, mentioning: "layers/\(layer)/map", "corrupt map")
        expectOneLineError(try cli.run(["read", "v", "--length", "1"]), status: 1, mentioning: "checksum", "corrupt map read")
    }
}

@Suite struct CLIWorkflow {
    @Test func importExportSnapshotCloneRoundTrip() throws {
        let cli = CLI()
        var rng = SystemRandomNumberGenerator()
        var image = Data((0..<(10 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        image.replaceSubrange((4 << 20)..<(8 << 20), with: Data(count: 4 << 20))   // a hole
        let src = cli.store + "-image.raw", dst = cli.store + "-out.raw"
        #expect(FileManager.default.createFile(atPath: src, contents: image))
        #expect(try cli.run(["import", "img", src]).status == 0)
        #expect(try cli.run(["export", "img", dst]).status == 0)
        #expect(FileManager.default.contents(atPath: dst) == image)
        let listed = try JSONSerialization.jsonObject(with: try cli.run(["list", "--json"]).stdoutData) as! [[String: Any]]
        #expect(listed.first?["blocks"] as? Int == 2)   // the zero block is stored as nothing
        #expect(try cli.run(["snapshot", "img", "img-s"]).status == 0)
        #expect(try cli.run(["write", "img", "--offset", "0"], stdin: Data("changed".utf8)).status == 0)
        #expect(try cli.run(["read", "img-s", "--length", "7"]).stdoutData == image.prefix(7))
        #expect(try cli.run(["clone", "img-s", "vm1", "--size", "20M"]).status == 0)
        #expect(try cli.run(["read", "vm1", "--offset", "1M", "--length", "1M"]).stdoutData == image[(1 << 20)..<(2 << 20)])
        let hashed = try cli.run(["hash", "img-s", "--json", "--hashmap-out", cli.store + "-hashmap.json"])
        #expect(hashed.status == 0)
        let h = try JSONSerialization.jsonObject(with: hashed.stdoutData) as! [String: Any]
        #expect((h["top_hash"] as? String)?.count == 64)
        let hm = try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: cli.store + "-hashmap.json")!) as! [String: Any]
        #expect(hm["block_size"] as? Int == 4 << 20 && hm["bytes"] as? Int == 10 << 20 && (hm["hashes"] as? [String])?.count == 3)
        #expect(try cli.run(["flatten", "vm1"]).status == 0)
        #expect(try cli.run(["setinfo", "vm1", "ganeti.cname=snf-vol-7"]).status == 0)
        let vi = try JSONSerialization.jsonObject(with: try cli.run(["info", "vm1", "--json"]).stdoutData) as! [String: Any]
        #expect(vi["parent"] == nil || vi["parent"] is NSNull)
        #expect((vi["metadata"] as? [String: String])?["ganeti.cname"] == "snf-vol-7")
        #expect(try cli.run(["remove", "vm1"]).status == 0)
        #expect(try cli.run(["remove", "img-s"]).status == 0)
        #expect(try cli.run(["gc", "--apply", "--grace", "0"]).status == 0)
        #expect(try cli.run(["verify", "img"]).status == 0)
        #expect(try cli.run(["rename", "img", "img2"]).status == 0)
        #expect(try cli.run(["read", "img2", "--length", "7"]).stdout == "changed")
    }

    @Test func configFileIsRead() throws {
        let cli = CLI()
        let conf = cli.store + ".conf"
        #expect(FileManager.default.createFile(atPath: conf, contents: Data("# test\n[store]\nbackend = dir\npath = \(cli.store)\n[node]\nname = conf-node\n".utf8)))
        #expect(try cli.run(["create", "v", "--size", "8M", "--config", conf], withStore: false).status == 0)
        #expect(try cli.run(["lock", "v"], env: ["ARCHIP_CONFIG": conf], withStore: false).status == 0)
        let info = try JSONSerialization.jsonObject(with: try cli.run(["info", "v", "--json"]).stdoutData) as! [String: Any]
        let holders = ((info["lock"] as? [String: Any])?["holders"] as? [[String: Any]]) ?? []
        #expect(holders.first?["node"] as? String == "conf-node")
        #expect(FileManager.default.createFile(atPath: conf, contents: Data("[store]\nbackend = rados\n".utf8)))
        expectOneLineError(try cli.run(["list", "--config", conf], withStore: false), status: 2, mentioning: "needs 'pool'", "rados without a pool")
        #expect(FileManager.default.createFile(atPath: conf, contents: Data("[store]\nbackend = s3\n".utf8)))
        expectOneLineError(try cli.run(["list", "--config", conf], withStore: false), status: 2, mentioning: "unknown store backend 's3'", "unsupported backend")
    }
}

import Foundation
import Testing

@Suite struct FillCLI {
    func image(_ cli: CLI, mib: Int = 9) -> String {
        let path = cli.store + "-image.raw"
        var rng = SystemRandomNumberGenerator()
        #expect(FileManager.default.createFile(atPath: path, contents: Data((0..<(mib << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) })))
        return path
    }

    @Test func fillReportsProgressAndResultAsJSON() throws {
        let cli = CLI()
        let img = image(cli)
        let r = try cli.run(["fill", "v", "--from", "file:" + img, "--progress", "json", "--json", "--hashmap-out", cli.store + ".hm"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(!lines.isEmpty)
        for l in lines {
            let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any]
            #expect(o?["blocks_total"] as? Int == 3, "progress line: \(l)")
        }
        let result = try JSONSerialization.jsonObject(with: r.stdoutData) as! [String: Any]
        #expect(result["fetched"] as? Int == 3 && result["cloned"] as? Bool == false)
        #expect((result["top_hash"] as? String)?.count == 64)
        #expect(try cli.run(["export", "v", cli.store + ".out"]).status == 0)
        #expect(FileManager.default.contents(atPath: cli.store + ".out") == FileManager.default.contents(atPath: img))
        // The same image again, with its hashmap: nothing fetched.
        let again = try cli.run(["create", "w", "--size", "16M", "--from", "file:" + img, "--hashmap", cli.store + ".hm", "--progress", "none"])
        #expect(again.status == 0 && again.stdout.contains("fetched 0"), "\(again.stdout) \(again.stderr)")
    }

    @Test func badFillsAreOneLineErrorsAndLeaveNothing() throws {
        let cli = CLI()
        let img = image(cli)
        try cli.run(["create", "keep", "--size", "4M"])
        let before = cli.snapshotOfFiles()
        expectOneLineError(try cli.run(["fill", "keep", "--from", "file:" + img]), status: 1, mentioning: "--grow", "image too large")
        expectOneLineError(try cli.run(["fill", "x", "--from", "file:/nonexistent"]), status: 1, mentioning: "/nonexistent", "missing file")
        expectOneLineError(try cli.run(["fill", "x", "--from", "ftp://example"]), status: 2, mentioning: "unknown source", "bad source")
        expectOneLineError(try cli.run(["fill", "x", "--from", "snapshot:../x"]), status: 2, "bad snapshot name")
        expectOneLineError(try cli.run(["fill", "x", "--from", "file:" + img, "--sha256", "zz"]), status: 2, "bad sha256")
        expectOneLineError(try cli.run(["fill", "x", "--from", "snapshot:nope"]), status: 1, mentioning: "nope", "missing snapshot")
        expectOneLineError(try cli.run(["fill", "x", "--from", "pithos:" + img]), status: 1, mentioning: "hashmap", "not a hashmap")
        #expect(cli.snapshotOfFiles() == before)
        // A wrong whole-image digest: nothing committed, a checkpoint to resume from.
        let bad = try cli.run(["fill", "x", "--from", "file:" + img, "--sha256", String(repeating: "ab", count: 32)])
        expectOneLineError(bad, status: 1, mentioning: "SHA-256", "digest mismatch")
        let listed = try JSONSerialization.jsonObject(with: try cli.run(["list", "--json"]).stdoutData) as! [[String: Any]]
        #expect(listed.map { $0["name"] as! String } == ["keep"])
        expectOneLineError(try cli.run(["fill", "x", "--from", "file:" + img]), status: 1, mentioning: "--resume", "interrupted fill")
        #expect(try cli.run(["fill", "x", "--abort"]).status == 0)
        #expect(try cli.run(["fill", "x", "--from", "file:" + img, "--progress", "none"]).status == 0)
    }
}

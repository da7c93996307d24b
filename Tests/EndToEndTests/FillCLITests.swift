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

    /// Two interrupted fills: `list --json` keeps stdout a list of volumes and
    /// says the notes on stderr in one line; `gc --apply` keeps and reports
    /// them while they are young, drops them past --fill-grace.
    @Test func interruptedFillsAreOneNoteLineAndGCReclaimsThemPastTheGrace() throws {
        let cli = CLI()
        let img = image(cli, mib: 5)
        for n in ["a", "b"] {
            let bad = try cli.run(["fill", n, "--from", "file:" + img, "--sha256", String(repeating: "ab", count: 32), "--progress", "none"])
            #expect(bad.status == 1, "\(bad.stderr)")
        }
        let listed = try cli.run(["list", "--json"])
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect((try JSONSerialization.jsonObject(with: listed.stdoutData) as? [Any])?.isEmpty == true)
        let notes = listed.stderr.split(separator: "\n")
        #expect(notes.count == 1, "list --json wrote \(notes.count) lines on stderr: \(listed.stderr)")
        #expect(listed.stderr.contains("fill in progress or interrupted: a") && listed.stderr.contains("fill in progress or interrupted: b"))
        let young = try cli.run(["gc", "--apply", "--grace", "0"])
        #expect(young.status == 0, "\(young.stderr)")
        #expect(young.stdout.contains("2 interrupted fill(s) hold"), "\(young.stdout)")
        #expect(young.stdout.contains("--resume") && young.stdout.contains("--abort"), "\(young.stdout)")
        expectOneLineError(try cli.run(["gc", "--fill-grace", "soon"]), status: 2, mentioning: "--fill-grace", "bad duration")
        let old = try cli.run(["gc", "--apply", "--grace", "0", "--fill-grace", "0s"])
        #expect(old.status == 0, "\(old.stderr)")
        #expect(old.stdout.contains("dropped the checkpoint of 2 abandoned fill(s)"), "\(old.stdout)")
        let after = try cli.run(["list"])
        #expect(!after.stdout.contains("interrupted"), "\(after.stdout)")
        #expect(try cli.run(["fill", "a", "--from", "file:" + img, "--progress", "none"]).status == 0)
    }
}

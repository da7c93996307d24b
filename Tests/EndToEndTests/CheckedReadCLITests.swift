import ArchipStore
import Foundation
import Testing

/// Issue 15, defects 1 and 2, as a user met them: a damaged block of the
/// store makes `read`, `export` and `fill --copy` fail with one line naming
/// it, and `verify` names it too; nothing reads as zeros or wrong bytes.
@Suite struct CLICheckedReads {
    /// vc: a clone of snapshot s of v (16 MiB of random bytes), hashed into
    /// content blocks. Returns the image and the path of block 2's content block.
    static func prepare(_ cli: CLI) throws -> ([UInt8], String) {
        var g = SystemRandomNumberGenerator()
        let image = (0..<(16 << 20)).map { _ in UInt8.random(in: 1...255, using: &g) }
        let src = cli.store + "-img"
        _ = FileManager.default.createFile(atPath: src, contents: Data(image))
        #expect(try cli.run(["create", "v", "--size", "16M"]).status == 0)
        #expect(try cli.run(["import", "v", src]).status == 0)
        #expect(try cli.run(["snapshot", "v", "s"]).status == 0)
        #expect(try cli.run(["hash", "s"]).status == 0)
        #expect(try cli.run(["clone", "s", "vc"]).status == 0)
        let h = SHA256.blockHash(Array(image[(8 << 20)..<(12 << 20)])).hex
        let path = "\(cli.store)/blocks/\(h.prefix(2))/\(h.dropFirst(2).prefix(2))/\(h.dropFirst(4).prefix(2))/\(h)"
        #expect(FileManager.default.fileExists(atPath: path))
        return (image, path)
    }

    @Test func emptiedContentBlockFailsReadAndExport() throws {
        let cli = CLI()
        let (image, block) = try CLICheckedReads.prepare(cli)
        #expect(truncate(block, 0) == 0)   // : > FILE
        let obj = String(block.dropFirst(cli.store.count + 1))
        expectOneLineError(try cli.run(["read", "vc", "--offset", "8M", "--length", "4M"]), status: 1, mentioning: obj, "read of the emptied block")
        let out = cli.store + "-out"
        let r = try cli.run(["export", "vc", out])
        expectOneLineError(r, status: 1, mentioning: "block 2", "export")
        #expect(r.stderr.contains(obj))
        // The rest still reads.
        let ok = try cli.run(["read", "vc", "--offset", "4M", "--length", "4096"])
        #expect(ok.status == 0)
        let same = Array(ok.stdoutData) == Array(image[(4 << 20)..<((4 << 20) + 4096)])
        #expect(same, "block 1 reads")
        let v = try cli.run(["verify", "vc"])
        #expect(v.status != 0)
        #expect(v.stdout.contains(obj) || v.stderr.contains(obj))
    }

    @Test func flippedBlockStopsFillCopyAndVerifyNamesIt() throws {
        let cli = CLI()
        let (_, block) = try CLICheckedReads.prepare(cli)
        let fd = open(block, O_RDWR)
        #expect(fd >= 0)
        var b: [UInt8] = [0]
        #expect(pread(fd, &b, 1, 1000) == 1)
        b[0] ^= 0x10
        #expect(pwrite(fd, &b, 1, 1000) == 1)
        close(fd)
        let obj = String(block.dropFirst(cli.store.count + 1))
        #expect(try cli.run(["snapshot", "vc", "vcs"]).status == 0)
        expectOneLineError(try cli.run(["fill", "vcopy", "--from", "snapshot:vcs", "--copy"]), status: 1, mentioning: obj, "fill --copy")
        let v = try cli.run(["verify", "vcs"])
        #expect(v.status != 0)
        #expect(v.stdout.contains("block 2"))
        #expect(v.stdout.contains(obj))
    }
}

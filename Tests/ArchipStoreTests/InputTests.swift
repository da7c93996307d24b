import Testing
@testable import ArchipStore

@Suite struct SizeParsing {
    @Test(arguments: [("10G", UInt64(10) << 30), ("512M", 512 << 20), ("1T", 1 << 40), ("4096", 4096),
                      ("10GiB", 10 << 30), ("2k", 2048), ("16T", 16 << 40)])
    func accepts(_ text: String, _ bytes: UInt64) throws {
        #expect(try ByteCount(parsing: text).validatedVolumeSize().bytes == bytes)
    }

    @Test(arguments: ["-1", "0", "1Q", "99999999T", "", "1.5G", "G", "12 34", "0x10", "100", "99999999999999999999", "2P"])
    func refuses(_ text: String) {
        #expect(throws: StoreError.self) { try ByteCount(parsing: text).validatedVolumeSize(text) }
    }

    @Test func errorsSayWhatWasWrong() {
        do {
            _ = try ByteCount(parsing: "1Q")
            Issue.record("accepted 1Q")
        } catch let e as StoreError {
            #expect(e.code == .invalidSize)
            #expect(e.description.contains("'1Q'"))
        } catch { Issue.record("\(error)") }
    }
}

@Suite struct Names {
    @Test(arguments: ["3f1b5c4e-7d0a-4f36-9a8e-0c1d2e3f4a5b.ext.disk0", "3f1b5c4e-7d0a-4f36-9a8e-0c1d2e3f4a5b.ext.disk0.snap",
                      "snf-vol-42", "vol_1", "A", String(repeating: "a", count: 128)])
    func accepts(_ text: String) throws {
        #expect(try VolumeName(text).value == text)
    }

    @Test(arguments: ["", "/", "..", ".", "a/b", "../etc/passwd", "a\u{0}b", "x..y", ".hidden", "-rf",
                      String(repeating: "a", count: 129), "vol 1", "vol\n", "ΑΒΓ", "a\\b", "~root"])
    func refuses(_ text: String) {
        #expect(throws: StoreError.self) { try VolumeName(text) }
    }

    @Test func objectNamesCannotEscape() {
        #expect(ObjectName(validating: "names/../x") == nil)
        #expect(ObjectName(validating: "/etc/passwd") == nil)
        #expect(ObjectName(validating: "names/.tmp-1") == nil)
        #expect(ObjectName(validating: "layers/ab/map") != nil)
    }
}

@Suite struct PithosHashes {
    @Test func zeroBlockHashesLikeEmpty() {
        #expect(ContentHash.ofEmpty.hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.blockHash([UInt8](repeating: 0, count: 4 << 20)) == ContentHash.ofEmpty)
    }

    @Test func trailingZerosDoNotCount() {
        let data: [UInt8] = Array("hello".utf8)
        #expect(SHA256.blockHash(data + [0, 0, 0]) == SHA256.digest(data))
        #expect(SHA256.digest(data).hex == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    }

    @Test func topHash() {
        let a = SHA256.digest(Array("a".utf8)), b = SHA256.digest(Array("b".utf8)), c = SHA256.digest(Array("c".utf8))
        #expect(PithosHashmap.topHash([]) == ContentHash.ofEmpty)
        #expect(PithosHashmap.topHash([a]) == a)
        #expect(PithosHashmap.topHash([a, b]) == SHA256.digest(a.bytes + b.bytes))
        // Three leaves pad to four with a zero digest.
        let left = SHA256.digest(a.bytes + b.bytes)
        let right = SHA256.digest(c.bytes + [UInt8](repeating: 0, count: 32))
        #expect(PithosHashmap.topHash([a, b, c]) == SHA256.digest(left.bytes + right.bytes))
    }

    @Test func hashmapJSONRoundTripAndChecks() throws {
        let m = PithosHashmap(blockSize: 4 << 20, bytes: 5 << 20, hashes: [ContentHash.ofEmpty, ContentHash.ofEmpty])
        let back = try PithosHashmap.decode(try m.jsonData())
        #expect(back == m)
        let bad = #"{"block_size":4194304,"block_hash":"sha256","hashes":["e3b0"],"bytes":1}"#
        #expect(throws: StoreError.self) { try PithosHashmap.decode(Data(bad.utf8)).contentHashes }
        let short = #"{"block_size":4194304,"block_hash":"sha256","hashes":[],"bytes":1}"#
        #expect(throws: StoreError.self) { try PithosHashmap.decode(Data(short.utf8)) }
    }
}

import Foundation

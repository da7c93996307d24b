import ArchipTestSupport
import Foundation
import Testing

/// `archip fill` and `archip create --from` against a real nginx on 127.0.0.1
/// (tests/e2e/nginx): through a proxy that cuts connections mid-transfer, over
/// HTTPS with the test's CA, and from a corrupted image with a hashmap. Every
/// result is checked with `archip export` + `cmp` against the served file.
@Suite(.needsNginx, .nginx)
struct FillHTTPCLI {
    static let blockSize = 4 << 20

    var fx: HTTPFixture { HTTPFixture.current! }

    /// `cmp` of a volume's export against a file (a volume larger than the
    /// file must hold zeros past it); "" when equal, what differs otherwise.
    func exportDiffers(_ cli: CLI, _ volume: String, from file: String) throws -> String {
        let out = cli.store + "-\(volume).export"
        let e = try cli.run(["export", volume, out])
        guard e.status == 0 else { return "export failed: \(e.stderr)" }
        defer { try? FileManager.default.removeItem(atPath: out) }
        let size = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? -1
        let c = try shell("cmp -n \(size) '\(file)' '\(out)'")
        guard c.status == 0 else { return "cmp: \(c.out)" }
        let exported = try Data(contentsOf: URL(fileURLWithPath: out))
        guard exported.count >= size else { return "export has \(exported.count) bytes, the source \(size)" }
        return exported[size...].allSatisfy { $0 == 0 } ? "" : "the volume is not zero past the source's \(size) bytes"
    }

    func names(_ cli: CLI) throws -> [String] {
        let r = try cli.run(["list", "--json"])
        let listed = try JSONSerialization.jsonObject(with: r.stdoutData) as? [[String: Any]] ?? []
        return listed.compactMap { $0["name"] as? String }.sorted()
    }

    /// Lines of the proxy's log that record a cut (`conn 3: cut after 1500000 bytes (reset)`).
    func cuts(_ proxy: HTTPFixture.Child) -> Int {
        proxy.logText.split(separator: "\n").filter { $0.contains(": cut after") }.count
    }

    /// nginx throttled (`/slow/`, limit_rate 1 MB/s) behind the cutting proxy,
    /// every connection cut after 1.5 MB: each 4 MiB block takes about three
    /// connections. `fill` and `create --from` both retry and end up equal to
    /// the source, byte for byte.
    @Test(arguments: [("fill", "reset"), ("create", "close")])
    func cutConnectionsAreRetriedAndTheVolumeEqualsTheSource(command: String, mode: String) throws {
        let cli = CLI()
        let name = "cut-\(command).raw"
        _ = try fx.publish(name)
        let proxy = try fx.startCuttingProxy(cutEvery: 1, cutAfter: 1_500_000, mode: mode)
        defer { proxy.stop() }
        let url = "http://127.0.0.1:\(proxy.port)/slow/\(name)"
        let args = command == "fill"
            ? ["fill", "v", "--from", url, "--json", "--progress", "none"]
            : ["create", "v", "--size", "32M", "--from", url, "--json", "--progress", "none"]
        let r = try cli.run(args)
        #expect(r.status == 0, "\(command) through the cutting proxy: \(r.stderr)\nproxy log:\n\(proxy.logText)")
        let blocks = HTTPFixture.imageSize / FillHTTPCLI.blockSize
        let result = try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any] ?? [:]
        if command == "fill" {
            #expect(result["fetched"] as? Int == blocks, "\(r.stdout)")
        } else {   // create --json prints the new volume's info
            #expect(result["size"] as? Int == 32 << 20 && result["metadata"] != nil, "\(r.stdout)")
        }
        // The cuts really happened, mid-response, and the retries reached nginx:
        // more requests for the image than one size probe plus one per block.
        let cutCount = cuts(proxy)
        #expect(cutCount >= 2 * blocks, "the proxy cut only \(cutCount) connections:\n\(proxy.logText)")
        let requests = try fx.accessLines(for: "/slow/\(name)", awaiting: 1 + blocks + cutCount)
        #expect(requests.count >= 1 + blocks + cutCount / 2, "nginx saw \(requests.count) requests for \(cutCount) cuts")
        print("FillHTTPCLI \(command) through the proxy (\(mode)): \(cutCount) cuts, \(requests.count) requests at nginx")
        #expect(try exportDiffers(cli, "v", from: "\(fx.www)/\(name)") == "")
    }

    /// HTTPS with the CA the fixture made: verified with `--cacert`, refused
    /// without it (one line naming the certificate problem and `--cacert`,
    /// nothing created).
    @Test func httpsWithTheTestCA() throws {
        let cli = CLI()
        _ = try fx.publish("tls.raw")
        let url = "\(fx.httpsURL)/tls.raw"
        let refused = try cli.run(["create", "v", "--size", "32M", "--from", url, "--progress", "none"])
        expectOneLineError(refused, status: 1, mentioning: "--cacert", "https without the CA")
        #expect(try names(cli) == [])
        let r = try cli.run(["create", "v", "--size", "32M", "--from", url, "--cacert", fx.caPath, "--progress", "none"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try exportDiffers(cli, "v", from: "\(fx.www)/tls.raw") == "")
        let f = try cli.run(["fill", "v", "--from", "https://localhost:\(fx.httpsPort)/tls.raw", "--cacert", fx.caPath,
                             "--progress", "none"])
        #expect(f.status == 0, "https://localhost: \(f.stderr)")
    }

    /// One flipped byte in block 3 of the served image, checked against the
    /// clean image's hashmap (made by the independent reference script, served
    /// by nginx for `create`, a file for `fill`): both fail naming block 3, the
    /// expected and the received hash and the URL; `create` leaves nothing in
    /// `archip list`, `fill` leaves the volume's content as it was.
    @Test func aFlippedByteNamesTheBlockAndChangesNothing() throws {
        let cli = CLI()
        let bad = 3, offset = bad * FillHTTPCLI.blockSize + 12345
        var corrupt = fx.image
        corrupt[offset] ^= 0x01
        _ = try fx.publish("clean.raw")
        let url = try fx.publish("corrupt.raw", bytes: corrupt)
        let reference = HTTPFixture.repoRoot.appendingPathComponent("tests/reference/pithos_hashmap.py").path
        func hashmap(_ file: String) throws -> (json: Data, hashes: [String]) {
            let r = try shell("'\(HTTPFixture.python ?? "python3")' '\(reference)' '\(fx.www)/\(file)'")
            #expect(r.status == 0, "\(r.out)")
            let o = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
            let hm = o["hashmap"] as? [String: Any] ?? [:]
            return (try JSONSerialization.data(withJSONObject: hm), hm["hashes"] as? [String] ?? [])
        }
        let clean = try hashmap("clean.raw"), received = try hashmap("corrupt.raw")
        #expect(clean.hashes.count == 5 && clean.hashes[bad] != received.hashes[bad])
        try clean.json.write(to: URL(fileURLWithPath: "\(fx.www)/clean.hashmap"))
        try clean.json.write(to: URL(fileURLWithPath: cli.store + "-clean.hashmap"))

        func expectNamesTheBlock(_ r: CLI.Result, _ what: String) {
            expectOneLineError(r, status: 1, mentioning: "block \(bad) ", what)
            for part in [clean.hashes[bad], received.hashes[bad], url] {
                #expect(r.stderr.contains(part), "\(what): '\(r.stderr)' should name \(part)")
            }
        }

        // A volume that holds other data: the failed fill must not change it.
        let keepImage = cli.store + "-keep.raw"
        try Data(fx.image.reversed()).write(to: URL(fileURLWithPath: keepImage))
        #expect(try cli.run(["fill", "keep", "--from", "file:" + keepImage, "--progress", "none"]).status == 0)
        let before = try names(cli)

        expectNamesTheBlock(try cli.run(["create", "new", "--size", "32M", "--from", url,
                                         "--hashmap", "\(fx.httpURL)/clean.hashmap", "--progress", "none"]), "create")
        #expect(try names(cli) == before, "a failed create left a volume")
        expectNamesTheBlock(try cli.run(["fill", "keep", "--from", url, "--hashmap", cli.store + "-clean.hashmap",
                                         "--progress", "none"]), "fill")
        #expect(try names(cli) == before)
        #expect(try exportDiffers(cli, "keep", from: keepImage) == "", "a failed fill changed the volume")
        // Block 3 really came from nginx, once per run (a mismatch is not retried).
        let start = bad * FillHTTPCLI.blockSize
        let block3 = try fx.accessLines(for: "/corrupt.raw").filter { $0.range.hasPrefix("bytes=\(start)-") }
        #expect(block3.count == 2, "nginx served block 3 \(block3.count) times")
        // After --abort, the clean image with the same hashmap fills it.
        #expect(try cli.run(["fill", "keep", "--abort"]).status == 0)
        let ok = try cli.run(["fill", "keep", "--from", "\(fx.httpURL)/clean.raw", "--hashmap", cli.store + "-clean.hashmap",
                              "--progress", "none"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(try exportDiffers(cli, "keep", from: "\(fx.www)/clean.raw") == "")
    }
}

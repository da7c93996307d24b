import ArchipStore
import ArchipStoreTesting
import ArchipTestSupport
import Foundation
import Testing

/// `archip fill` from nginx, killed with SIGKILL mid-fill, then resumed:
/// the resumed run fetches only the blocks the killed one had not verified
/// (counted in nginx's access log), and the result equals the source. On each
/// backend: the checkpoint a resume trusts lives in the store's objects.
@Suite(.needsNginx, .nginx)
struct HTTPResumeTests {
    /// The archip binary built next to this test bundle, or nil.
    static let archip: String? = {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
        let p = dir + "/archip"
        return FileManager.default.isExecutableFile(atPath: p) ? p : nil
    }()

    func run(_ args: [String]) throws -> (Int32, Data) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: HTTPResumeTests.archip!)
        p.arguments = args
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("archip-out-\(UUID().uuidString)")
        #expect(FileManager.default.createFile(atPath: out.path, contents: nil))
        let fh = try FileHandle(forWritingTo: out)
        p.standardOutput = fh
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try fh.close()
        let data = try Data(contentsOf: out)
        try? FileManager.default.removeItem(at: out)
        return (p.terminationStatus, data)
    }

    @Test(arguments: TestBackend.persistent)
    func killedFillResumesWithoutFetchingVerifiedBlocksAgain(_ backend: TestBackend) throws {
        guard HTTPResumeTests.archip != nil else {
            print("SKIP killed fill: the archip binary is not built next to the tests")
            return
        }
        let t = try backend.store("http-resume")
        defer { t.remove() }
        let fx = try #require(HTTPFixture.current)
        let name = "resume-\(backend).raw"
        _ = try fx.publish(name)
        let url = fx.httpURL + "/slow/" + name   // 1 MB/s per connection
        let store = t.location

        let p = Process()
        p.executableURL = URL(fileURLWithPath: HTTPResumeTests.archip!)
        p.arguments = ["fill", "v", "--from", url, "--jobs", "2", "--progress", "none", "--store", store]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        Thread.sleep(forTimeInterval: 6)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal)
        let listed = try run(["list", "--json", "--store", store])
        #expect(String(decoding: listed.1, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]"
                || String(decoding: listed.1, as: UTF8.self).contains("[]"), "a killed fill left a visible volume")

        let before = try fx.accessLines(for: "/slow/" + name).count
        let (status, out) = try run(["fill", "v", "--from", url, "--resume", "--json", "--progress", "none", "--store", store])
        #expect(status == 0)
        let r = try JSONSerialization.jsonObject(with: out) as? [String: Any] ?? [:]
        let fetched = r["fetched"] as? Int ?? -1, resumed = r["resumed"] as? Int ?? -1
        #expect(resumed > 0, "nothing was checkpointed before the kill")
        #expect(fetched + resumed == HTTPFixture.imageSize / (4 << 20))
        // One size probe plus one GET per block not verified before.
        let after = try fx.accessLines(for: "/slow/" + name, awaiting: before + 1 + fetched).dropFirst(before)
        let blockGets = after.filter { $0.range != "bytes=0-0" }
        #expect(blockGets.count == fetched, "resumed run fetched \(blockGets.count) blocks, reported \(fetched)")
        let v = try t.store.open(try VolumeName("v"), mode: .readOnly)
        #expect(try v.read(at: 0, length: HTTPFixture.imageSize) == fx.image)
    }
}

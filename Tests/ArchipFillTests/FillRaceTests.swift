@testable import ArchipFill
import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

/// Issue 15, defect 9: two fills of one new name at once both "won": the
/// second, which had seen no volume, switched the first one's volume when it
/// committed. The opener of the second fill's source (called after its
/// check that the name is new, before its checkpoint) waits until the first
/// fill has committed: that interleaving, every time.
@Suite struct FillRace {
    /// Opens a file as an http source, once `gate` is open.
    final class GatedOpener: RemoteSourceOpener, @unchecked Sendable {
        let path: String
        let gate = DispatchSemaphore(value: 0)
        let reached = DispatchSemaphore(value: 0)
        init(path: String) { self.path = path }
        func openImage(url: String, blockSize: Int, expectedHashes: [ContentHash]?) throws -> any BlockSource {
            reached.signal()
            gate.wait()
            return try FileSource(path: path, blockSize: blockSize, expectedHashes: expectedHashes)
        }
        func fetchText(url: String, limit: Int) throws -> [UInt8] { throw StoreError(.unsupported, "not in this test") }
        func pithosFetcher(template: String) throws -> any PithosBlockFetcher { throw StoreError(.unsupported, "not in this test") }
    }

    @Test(arguments: TestBackend.persistent)
    func aFillThatSawNoVolumeNeverSwitchesTheOneMadeMeanwhile(_ backend: TestBackend) throws {
        let t = try backend.store("fill-race")
        defer { t.remove() }
        let dir = tempDir("fill-race")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = makeImage(dir + "/first.raw", seed: 1, blocks: 2, tail: 0)
        _ = makeImage(dir + "/second.raw", seed: 2, blocks: 2, tail: 0)

        let opener = GatedOpener(path: dir + "/second.raw")
        var second = FillRequest(target: vname("r"), source: .url("http://example.invalid/second.raw"))
        second.remote = opener
        let request = second
        let secondStore = try t.node("n2")
        let outcome = Locked<Result<FillOutcome, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            outcome.withLock { $0 = Result { try Filler.run(request, store: secondStore) } }
            done.signal()
        }
        opener.reached.wait()   // the second has seen no 'r'
        _ = try Filler.run(FillRequest(target: vname("r"), source: .file(dir + "/first.raw")), store: t.store)
        opener.gate.signal()
        done.wait()

        guard case .failure(let e)? = outcome.withLock({ $0 }) else {
            Issue.record("the second fill of a new name succeeded after the first had made it")
            return
        }
        #expect((e as? StoreError)?.code == .alreadyExists, "\(e)")
        // The first fill's content, whole; no checkpoint left.
        let v = try t.store.open(vname("r"), mode: .readOnly)
        #expect(try v.read(at: 0, length: first.count) == first)
        #expect(try t.store.interruptedFills().isEmpty)
    }
}

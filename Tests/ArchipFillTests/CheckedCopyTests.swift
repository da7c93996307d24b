@testable import ArchipFill
import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

/// `fill --copy` from a snapshot or volume of the same store reads through
/// checked reads (issue 15): a damaged block stops the copy with an error
/// naming it, and no target is made.
@Suite struct CheckedCopies {
    /// "base" filled from an image (content blocks), block 3 then written in
    /// part (an owned block), snapshot "s".
    static func prepare(_ dir: String, _ t: TestStore) throws {
        _ = makeImage(dir + "/img.raw", blocks: 5, tail: 0)
        _ = try Filler.run(FillRequest(target: vname("base"), source: .file(dir + "/img.raw")), store: t.store)
        try t.store.withVolume(vname("base")) { try $0.write(at: (3 << 22) + 100, [1, 2, 3, 4]) }
        try t.store.snapshot(vname("base"), as: vname("s"))
    }

    static func flip(_ t: TestStore, _ obj: ObjectName, at offset: UInt64) throws {
        let outside = try t.outsideObjects()
        var b: [UInt8] = [0]
        _ = try b.withUnsafeMutableBytes { try outside.read(obj, at: offset, into: $0) }
        b[0] ^= 0x01
        try b.withUnsafeBytes { try outside.write(obj, at: offset, $0) }
        try outside.syncContents(obj)
    }

    static func expectCopyFails(_ t: TestStore, block: UInt32, object: ObjectName,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
        var copy = FillRequest(target: vname("copy"), source: .snapshot(vname("s")))
        copy.copy = true
        do {
            _ = try Filler.run(copy, store: try t.node("copier"))
            Issue.record("the copy of a damaged snapshot succeeded", sourceLocation: sourceLocation)
        } catch {
            let text = "\(error)"
            #expect(text.contains("block \(block)"), "\(text)", sourceLocation: sourceLocation)
            #expect(text.contains(object.path), "\(text)", sourceLocation: sourceLocation)
        }
        #expect(try !t.store.list().map(\.name).contains("copy"), sourceLocation: sourceLocation)
        let r = try t.store.verify(vname("s"))
        #expect(r.problems.map(\.block) == [block], sourceLocation: sourceLocation)
    }

    @Test(arguments: TestBackend.persistent)
    func flippedContentBlockStopsTheCopy(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("copy-content", backend)
        defer { cleanUp(dir, t) }
        try CheckedCopies.prepare(dir, t)
        let h = SHA256.blockHash(Array(try readAll(t.store, "s")[(1 << 22)..<(2 << 22)]))
        let obj = try #require(ObjectName(validating: "blocks/\(h.hex.prefix(2))/\(h.hex.dropFirst(2).prefix(2))/\(h.hex.dropFirst(4).prefix(2))/\(h.hex)"))
        try CheckedCopies.flip(t, obj, at: 4321)
        try CheckedCopies.expectCopyFails(t, block: 1, object: obj)
    }

    @Test(arguments: TestBackend.persistent)
    func flippedOwnedBlockStopsTheCopy(_ backend: TestBackend) throws {
        let (dir, t) = try scratch("copy-owned", backend)
        defer { cleanUp(dir, t) }
        try CheckedCopies.prepare(dir, t)
        let layer = try t.store.info(vname("s")).layer
        let obj = try #require(ObjectName(validating: "layers/\(layer)/b00000003"))
        try CheckedCopies.flip(t, obj, at: 3_000_000)
        try CheckedCopies.expectCopyFails(t, block: 3, object: obj)
    }
}

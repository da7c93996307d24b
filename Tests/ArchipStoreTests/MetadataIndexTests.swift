import ArchipStore
import ArchipStoreTesting
import Foundation
import Testing

/// Finding a volume by its Ganeti disk name (`disk:NAME` origins, Cyclades'
/// snapshots) reads a hint, not every record, and the hint can never make an
/// answer wrong: stale, damaged, ambiguous and missing hints fall back to
/// reading every record.
@Suite struct MetadataIndexLookups {
    let objects = FaultyObjectStore(MemoryObjectStore())
    let store: VolumeStore
    let key = GanetiMetadata.cname

    init() throws {
        store = try VolumeStore(objects: objects, node: "node-a")
        objects.arm(nil)   // count, fail nothing
    }

    func name(_ s: String) throws -> VolumeName { try VolumeName(s) }

    /// What one lookup costs in object calls.
    func lookup(_ value: String) throws -> (found: [String], lists: Int, reads: Int) {
        let before = objects.callCounts
        let found = try store.volumes(withMetadata: key, equalTo: value).map(\.value)
        let after = objects.callCounts
        return (found, (after[.list] ?? 0) - (before[.list] ?? 0), (after[.read] ?? 0) - (before[.read] ?? 0))
    }

    @Test func aLookupReadsTheHintNotEveryRecord() throws {
        for i in 0..<200 {
            try store.create(try name("vol-\(i)"), size: .mebibytes(4), metadata: [key: "snf-vol-\(i)"])
        }
        let r = try lookup("snf-vol-150")
        #expect(r.found == ["vol-150"])
        #expect(r.lists == 0 && r.reads <= 3, "hint + record: \(r)")
        // A clone and a fill's commit leave hints too.
        try store.snapshot(try name("vol-1"), as: try name("snap-1"))
        try store.clone(try name("snap-1"), as: try name("clone-1"), metadata: [key: "snf-vol-900"])
        let c = try lookup("snf-vol-900")
        #expect(c.found == ["clone-1"] && c.lists == 0, "\(c)")
        // Nothing by that name: the definition (every record) says so.
        let none = try lookup("snf-vol-7777")
        #expect(none.found.isEmpty && none.lists > 0)
    }

    @Test func staleDamagedAndAmbiguousHintsNeverGiveAWrongAnswer() throws {
        try store.create(try name("a"), size: .mebibytes(4), metadata: [key: "snf-vol-1"])
        try store.create(try name("b"), size: .mebibytes(4), metadata: [key: "snf-vol-2"])
        // Removed: the hint goes with it; recreated under another name.
        try store.remove(try name("a"))
        #expect(try lookup("snf-vol-1").found.isEmpty)
        try store.create(try name("a2"), size: .mebibytes(4), metadata: [key: "snf-vol-1"])
        #expect(try lookup("snf-vol-1") == (["a2"], 0, try lookup("snf-vol-1").reads))
        // A hint that names the wrong volume (an older archip renamed it, a
        // crash, a hand edit): confirmed against the record, so a full read
        // answers, and repairs it for the next lookup.
        try objects.put(ObjectName("index", key, "snf-vol-2"), Array("a2\n".utf8), durable: true)
        let wrong = try lookup("snf-vol-2")
        #expect(wrong.found == ["b"] && wrong.lists > 0)
        #expect(try lookup("snf-vol-2").lists == 0, "repaired")
        // Garbage in the hint.
        try objects.put(ObjectName("index", key, "snf-vol-2"), [0xff, 0xfe, 0x00], durable: true)
        #expect(try lookup("snf-vol-2").found == ["b"])
        // Two volumes claim one disk name: both are reported, never one of them.
        try store.create(try name("c"), size: .mebibytes(4), metadata: [key: "snf-vol-2"])
        #expect(try lookup("snf-vol-2").found == ["b", "c"])
        try store.remove(try name("b"))
        #expect(try lookup("snf-vol-2").found == ["c"])
        // Metadata changed by hand on the record: the record wins.
        try store.setMetadata(try name("c"), [key: "snf-vol-3"])
        #expect(try lookup("snf-vol-2").found.isEmpty)
        #expect(try lookup("snf-vol-3").found == ["c"])
    }

    @Test func valuesThatAreNotSafeNamesCannotEscapeTheIndex() throws {
        for v in ["../names/x", "a/b", ".hidden", "disk with spaces", String(repeating: "z", count: 300)] {
            let n = try name("v\(abs(v.hashValue) % 100000)")
            try store.create(n, size: .mebibytes(4), metadata: [key: v])
            #expect(try lookup(v).found == [n.value], "\(v)")
        }
        var listed: [String] = []
        try objects.enumerate(prefix: "index/") { listed.append($0.path); return true }
        #expect(listed.allSatisfy { $0.split(separator: "/").count == 3 && !$0.contains("..") }, "\(listed)")
        #expect(try store.list().count == 5, "no record was touched")
    }
}

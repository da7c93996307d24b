import ArchipStoreTesting
import Foundation
import Testing
@testable import ArchipStore

/// Finding a volume by metadata reads records only (no map is needed).
@Suite struct VolumesByMetadata {
    @Test(arguments: TestBackend.allCases)
    func findsOnlyVolumesWithThatValue(_ backend: TestBackend) throws {
        let t = try backend.store("bymeta")
        defer { t.remove() }
        let store = t.store
        try store.create(try VolumeName("a"), size: .mebibytes(8), metadata: ["ganeti.cname": "snf-vol-1"])
        try store.create(try VolumeName("b"), size: .mebibytes(8), metadata: ["ganeti.cname": "snf-vol-2"])
        try store.create(try VolumeName("c"), size: .mebibytes(8))
        try store.snapshot(try VolumeName("a"), as: try VolumeName("a-snap"))
        #expect(try store.volumes(withMetadata: "ganeti.cname", equalTo: "snf-vol-1") == [try VolumeName("a")])
        #expect(try store.volumes(withMetadata: "ganeti.cname", equalTo: "snf-vol-3").isEmpty)
        // A map that cannot be read does not matter to the lookup.
        try t.outsideObjects().put(ObjectName("layers", try store.record(try VolumeName("b")).layer.hex, "map"), [1, 2, 3], durable: true)
        #expect(try store.volumes(withMetadata: "ganeti.cname", equalTo: "snf-vol-2") == [try VolumeName("b")])
        // Every value of the key, volumes only (the snapshot of a copies its metadata).
        let all = try store.volumeMetadata("ganeti.cname")
        #expect(all.map(\.name.value) == ["a", "b"] && all.map(\.value) == ["snf-vol-1", "snf-vol-2"])
        #expect(try store.volumeMetadata("no.such.key").isEmpty)
    }
}

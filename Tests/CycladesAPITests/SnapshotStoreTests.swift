import ArchipStore
import ArchipStoreTesting
@testable import Cyclades
@testable import CycladesAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

/// Snapshots through the API reach the store wherever it is: a folder or a
/// pool (the control plane opens stores as archip and the provider do).
@Suite struct SnapshotsOnEitherBackend {
    @Test(arguments: TestBackend.persistent)
    func postAndDeleteASnapshot(_ backend: TestBackend) async throws {
        let t = try backend.store("api-snapshots")
        let f = try APIFixture()
        f.api.storePath = t.location
        try await f.app().test(.router) { c in
            _ = try await bootServer(f, c, extra: 0)
            let root = try #require(try f.registry.db.read { db in try Cyclades.Volume.fetchAll(db) }.first { $0.status == .inUse })
            // What the provider leaves in the store for this disk.
            try t.store.create(try VolumeName("disk-of-\(root.diskName)"), size: .mebibytes(8),
                               metadata: [GanetiMetadata.cname: root.diskName])
            var r = try await c.call(.post, "/volume/v3/snapshots", token: f.alice, json: #"{"snapshot":{"volume_id":"\#(root.id!)","name":"s"}}"#)
            #expect(r.status == 202, "\(backend): \(r.raw)")
            let id = try #require((r.json["snapshot"] as? [String: Any])?["id"] as? String)
            let storeName = "snf-snap-\(root.id!)-1"
            #expect(try t.store.summary(try VolumeName(storeName))?.kind == "snapshot", "\(backend)")
            r = try await c.call(.delete, "/volume/v3/snapshots/\(id)", token: f.alice)
            #expect(r.status == 202, "\(backend): \(r.raw)")
            #expect(try t.store.summary(try VolumeName(storeName)) == nil, "\(backend)")
        }
    }
}

import ArchipStore
@testable import Cyclades
import Foundation
import GRDB
import Testing

/// Registry.createSnapshot, the one way snapshots are made (snf-manage and the
/// API): names from the volume's counter, so a delete never makes a name come
/// back; a name the store already has is skipped; a held volume goes through
/// the node; a refusal changes nothing.
@Suite struct Snapshots {
    struct Setup {
        let f: Fixture
        let store: VolumeStore
        let volume: Cyclades.Volume
        let dir: String

        init() throws {
            f = try Fixture()
            let s = try f.activeServer()
            let r = f.registry
            volume = try #require(try r.db.read { db in try r.liveVolumes(db, server: s.id!) }.first)
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("snap-store-\(UUID().uuidString)").path
            store = try VolumeStore.directory(dir, node: "node1")
            try store.create(try VolumeName("vol-of-\(volume.diskName)"), size: .mebibytes(8),
                             metadata: [GanetiMetadata.cname: volume.diskName])
        }

        func snapshot(_ name: String? = nil, holderTimeout: TimeInterval = 0.5,
                      throughThisNode: (VolumeName, VolumeName) throws -> Bool = { _, _ in false }) throws -> Snapshot {
            try f.registry.createSnapshot(of: volume, owner: f.user.id, name: name, store: store, holderTimeout: holderTimeout,
                                          throughThisNode: throughThisNode)
        }
    }

    @Test func namesComeFromACounterThatNeverRepeats() throws {
        let s = try Setup()
        defer { try? FileManager.default.removeItem(atPath: s.dir) }
        let id = s.volume.id!
        let a = try s.snapshot("a"), b = try s.snapshot()
        #expect([a.storeName, b.storeName] == ["snf-snap-\(id)-1", "snf-snap-\(id)-2"])
        #expect(b.name == "snapshot of volume \(id)" && a.userid == s.f.user.id && a.size == s.volume.size)
        #expect(try s.store.summary(try VolumeName(a.storeName))?.kind == "snapshot")
        // Deleting the first (record and store snapshot) must not hand its name,
        // or the second's, out again: a count of the records would give -2.
        try s.store.remove(try VolumeName(a.storeName))
        try s.f.registry.db.write { db in _ = try Snapshot.deleteOne(db, key: a.id) }
        let c = try s.snapshot()
        #expect(c.storeName == "snf-snap-\(id)-3")
        // A store snapshot that already has the next name (made by hand) is skipped.
        try s.store.snapshot(try VolumeName("vol-of-\(s.volume.diskName)"), as: try VolumeName("snf-snap-\(id)-4"))
        #expect(try s.snapshot().storeName == "snf-snap-\(id)-5")
        let records = try s.f.registry.db.read { db in try Snapshot.order(Column("created")).fetchAll(db).map(\.storeName) }
        #expect(Set(records) == ["snf-snap-\(id)-2", "snf-snap-\(id)-3", "snf-snap-\(id)-5"])
    }

    @Test func aHeldVolumeGoesThroughItsHolderOrIsRefused() throws {
        let s = try Setup()
        defer { try? FileManager.default.removeItem(atPath: s.dir) }
        let source = try VolumeName("vol-of-\(s.volume.diskName)")
        // Node 2 holds it open, with a write it acknowledged and never flushed.
        let node2 = LockOwner(node: "node2", token: "t", pid: nil, since: Date())
        let held = try s.store.open(source, mode: .exclusive, owner: node2)
        defer { try? held.close() }
        try held.write(at: 4096, Array(repeating: 0xA5, count: 4096))
        // Nobody serves node 2's requests: refused in one line naming it, nothing recorded, nothing in the store.
        let e = #expect(throws: CycladesError.self) { try s.snapshot() }
        #expect(e?.kind == .conflict && e?.message.contains("node node2") == true && e?.message.contains("did not answer") == true,
                "\(e?.message ?? "")")
        #expect(try s.f.registry.db.read { db in try Snapshot.fetchCount(db) } == 0)
        #expect(try s.store.list().allSatisfy { !$0.name.hasPrefix("snf-snap") })
        // This node's daemon holds it: it takes it.
        var asked: [String] = []
        let mine = try s.snapshot { src, target in
            #expect(src == source)
            asked.append(target.value)
            return true
        }
        #expect(asked == [mine.storeName])
        // Node 2 serves requests (as its daemon does): the snapshot is taken
        // through its open volume and holds its acknowledged write.
        let stop = Locked(false)
        let served = Locked<[String]>([])
        let store = s.store
        Thread.detachNewThread {
            while !stop.withLock({ $0 }) {
                if let c = store.claimSnapshotRequest(source) {
                    do { try held.snapshot(c.snapshot); store.answer(c, error: nil) } catch { store.answer(c, error: "\(error)") }
                    served.withLock { $0.append(c.snapshot.value) }
                }
                usleep(20_000)
            }
        }
        defer { stop.withLock { $0 = true } }
        let theirs = try s.snapshot(holderTimeout: 10)
        #expect(served.withLock { $0 } == [theirs.storeName])
        let snap = try s.store.open(try VolumeName(theirs.storeName), mode: .readOnly)
        defer { try? snap.close() }
        #expect(try snap.read(at: 4096, length: 4096) == Array(repeating: 0xA5, count: 4096))
    }

    @Test func onlyInUseVolumesAndOnlyTheOneStoreVolumeOfTheDisk() throws {
        let s = try Setup()
        defer { try? FileManager.default.removeItem(atPath: s.dir) }
        var detached = s.volume
        detached.status = .available
        #expect(throws: CycladesError.self) { try s.f.registry.createSnapshot(of: detached, owner: s.f.user.id, name: nil, store: s.store) { _, _ in false } }
        // Two store volumes claiming the disk: which one is meant is not guessed.
        try s.store.create(try VolumeName("another"), size: .mebibytes(8), metadata: [GanetiMetadata.cname: s.volume.diskName])
        let e = #expect(throws: CycladesError.self) { try s.snapshot() }
        #expect(e?.message.contains("2 store volumes claim") == true, "\(e?.message ?? "")")
        #expect(try s.f.registry.db.read { db in try Snapshot.fetchCount(db) } == 0)
    }

    @Test func registerAndRemove() throws {
        let s = try Setup()
        defer { try? FileManager.default.removeItem(atPath: s.dir) }
        let r = s.f.registry
        // A store snapshot made by hand, recorded for alice.
        try s.store.snapshot(try VolumeName("vol-of-\(s.volume.diskName)"), as: try VolumeName("golden"))
        let g = try r.registerSnapshot(storeName: "golden", name: "golden image", user: "alice", sizeGB: 1)
        #expect(g.userid == s.f.user.id && g.volumeID == nil && g.storeName == "golden")
        for (store, user, size) in [("../x", "alice", 1), ("golden2", "nobody", 1), ("golden3", "alice", 0)] {
            #expect(throws: CycladesError.self, "\(store) \(user) \(size)") { try r.registerSnapshot(storeName: store, name: "n", user: user, sizeGB: size) }
        }
        // One a volume is cloned from stays, record and all; then it goes, from the store and the database.
        try s.store.clone(try VolumeName("golden"), as: try VolumeName("child"), size: nil)
        let e = #expect(throws: CycladesError.self) { try r.removeSnapshot(g.id, store: s.store) }
        #expect(e?.kind == .conflict)
        #expect(try r.db.read { db in try Snapshot.fetchOne(db, key: g.id) } != nil)
        try s.store.remove(try VolumeName("child"))
        try r.removeSnapshot(g.id, store: s.store)
        #expect(try s.store.summary(try VolumeName("golden")) == nil)
        #expect(try r.db.read { db in try Snapshot.fetchOne(db, key: g.id) } == nil)
        // One already gone from the store only loses its record.
        let h = try s.snapshot()
        try s.store.remove(try VolumeName(h.storeName))
        try r.removeSnapshot(h.id, store: s.store)
        #expect(try r.db.read { db in try Snapshot.fetchCount(db) } == 0)
        #expect(throws: CycladesError.self) { try r.removeSnapshot(h.id, store: s.store) }
    }

    /// A database from before the counter: it starts past each volume's snapshots.
    @Test func theMigrationStartsTheCounterPastExistingSnapshots() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cyclades-v2-\(UUID().uuidString).db").path
        do {
            let queue = try DatabaseQueue(path: path)
            try CycladesDatabase.migrator.migrate(queue, upTo: "v2")
            try queue.write { db in
                try db.execute(sql: """
                    INSERT INTO users (id, name, tokenHash, defaultProject, created) VALUES ('u1', 'alice', 'h', 'p1', '2026-01-01');
                    INSERT INTO projects (id, diskLimit) VALUES ('p1', 100);
                    INSERT INTO volume_types (name, diskTemplate) VALUES ('archipelago', 'ext_archipelago');
                    INSERT INTO volumes (id, userid, project, size, volumeTypeID, status, deleteOnTermination, created, updated)
                        VALUES (1, 'u1', 'p1', 1, 1, 'IN_USE', 1, '2026-01-01', '2026-01-01'),
                               (2, 'u1', 'p1', 1, 1, 'IN_USE', 1, '2026-01-01', '2026-01-01');
                    INSERT INTO snapshots (id, volumeID, userid, name, size, status, storeName, created)
                        VALUES ('s1', 1, 'u1', 'a', 1, 'AVAILABLE', 'snf-snap-1-1', '2026-01-01'),
                               ('s2', 1, 'u1', 'b', 1, 'AVAILABLE', 'snf-snap-1-2', '2026-01-01');
                    """)
            }
        }
        let db = try CycladesDatabase(path: path)   // runs v3
        let counters = try db.read { db in try Row.fetchAll(db, sql: "SELECT id, snapshotCounter FROM volumes ORDER BY id").map { [$0[0] as Int64, $0[1] as Int64] } }
        #expect(counters == [[1, 2], [2, 0]])
    }
}

/// The volume record changes the API makes go through the registry too.
@Suite struct VolumeRecordChanges {
    @Test func describeAndDeleteMetadata() throws {
        let f = try Fixture()
        let s = try f.activeServer()
        let r = f.registry
        let v = try #require(try r.db.read { db in try r.liveVolumes(db, server: s.id!) }.first)
        let d = try r.describeVolume(v.id!, name: "root", description: nil)
        #expect(d.name == "root" && d.description == v.description)
        #expect(try r.db.read { db in try Cyclades.Volume.fetchOne(db, key: v.id!) }?.name == "root")
        #expect(throws: CycladesError.self) { try r.describeVolume(999, name: "x", description: nil) }
        try r.setMetadata(volume: v.id!, ["a": "1", "b": "2"], replace: false)
        try r.deleteMetadata(volume: v.id!, key: "a")
        #expect(try r.metadata(volume: v.id!) == ["b": "2"])
        let e = #expect(throws: CycladesError.self) { try r.deleteMetadata(volume: v.id!, key: "a") }
        #expect(e?.kind == .itemNotFound)
    }
}

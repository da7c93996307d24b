import ArchipServe
import ArchipStore
import Foundation
import GRDB

extension Registry {
    /// A snapshot of a Cyclades volume in the store, named `snf-snap-VOLUME-N`
    /// from the volume's counter (never reused, so never a name a deleted
    /// snapshot had), and its record. The one way snapshots are made: both
    /// `snf-manage snapshot-create` and the API's POST /snapshots call it.
    ///
    /// Only IN_USE volumes. A held volume's snapshot must hold every write its
    /// holder acknowledged, so the holder's daemon takes it: `throughThisNode`
    /// is asked first (true when this node's daemon holds the volume and took
    /// it); otherwise the holder is asked through the store
    /// (`snapshotDelegating`), with a deadline and a one-line error naming it.
    public func createSnapshot(of volume: Volume, owner: String, name: String?, store: VolumeStore,
                               holderTimeout: TimeInterval = SnapshotRequests.defaultTimeout,
                               throughThisNode: (_ source: VolumeName, _ target: VolumeName) throws -> Bool) throws -> Snapshot {
        guard let id = volume.id, !volume.deleted, volume.status == .inUse else {
            throw CycladesError(.badRequest, "volume \(volume.id ?? 0) is \(volume.deleted ? "deleted" : volume.status.rawValue); only IN_USE volumes can be snapshotted")
        }
        let source: VolumeName
        do {
            let found = try store.volumes(withMetadata: GanetiMetadata.cname, equalTo: volume.diskName)
            guard found.count == 1, let only = found.first else {
                throw CycladesError(.backend, found.isEmpty ? "no store volume records \(volume.diskName)"
                                                            : "\(found.count) store volumes claim \(volume.diskName): \(found.map(\.value).joined(separator: ", "))")
            }
            source = only
        } catch let e as StoreError {
            throw CycladesError(.backend, e.description)
        }
        // Reserve the next number; one a store snapshot already has (made by
        // hand, or by the count-based names of before) is skipped.
        var target: VolumeName
        repeat {
            let n = try db.write { db -> Int64 in
                try db.execute(sql: "UPDATE volumes SET snapshotCounter = snapshotCounter + 1 WHERE id = ?", arguments: [id])
                return try Int64.fetchOne(db, sql: "SELECT snapshotCounter FROM volumes WHERE id = ?", arguments: [id]) ?? 0
            }
            target = try VolumeName("snf-snap-\(id)-\(n)")
        } while try store.summary(target) != nil
        do {
            try store.snapshot(source, as: target)
        } catch let e as StoreError where e.code == .locked {
            if try !throughThisNode(source, target) {
                do { try store.snapshotDelegating(source, as: target, timeout: holderTimeout) } catch let e as StoreError {
                    throw CycladesError(e.code == .locked ? .conflict : .backend, e.description)
                }
            }
        } catch let e as StoreError {
            throw CycladesError(.backend, e.description)
        }
        let snap = Snapshot(id: UUID().uuidString.lowercased(), volumeID: id, userid: owner, name: name ?? "snapshot of volume \(id)",
                            size: volume.size, status: "AVAILABLE", storeName: target.value, created: now())
        try db.write { db in try snap.insert(db) }
        return snap
    }
}

extension Registry {
    /// Records a snapshot that is already in the store (made by hand, or
    /// imported) for a user; the name must be a store name.
    public func registerSnapshot(storeName: String, name: String, user: String, sizeGB: Int) throws -> Snapshot {
        do { _ = try VolumeName(storeName) } catch let e as StoreError { throw CycladesError(.badRequest, e.message) }
        guard sizeGB > 0 else { throw CycladesError(.badRequest, "size \(sizeGB) GB: expected a number of GB above zero") }
        let u = try findUser(user)
        let snap = Snapshot(id: UUID().uuidString.lowercased(), volumeID: nil, userid: u.id, name: name, size: sizeGB,
                            status: "AVAILABLE", storeName: storeName, created: now())
        try db.write { db in try snap.insert(db) }
        return snap
    }

    /// Removes a snapshot from the store, then its record. One a volume was
    /// cloned from stays (conflict); one already gone from the store only
    /// loses its record.
    public func removeSnapshot(_ id: String, store: VolumeStore) throws {
        guard let s = try db.read({ db in try Snapshot.fetchOne(db, key: id) }) else { throw CycladesError(.itemNotFound, "snapshot \(id) does not exist") }
        do {
            try store.remove(try VolumeName(s.storeName))
        } catch let e as StoreError where e.code == .hasChildren {
            throw CycladesError(.conflict, e.description)
        } catch let e as StoreError where e.code == .notFound {
            // already gone from the store: drop the record
        } catch let e as StoreError {
            throw CycladesError(.backend, e.description)
        }
        try db.write { db in _ = try Snapshot.deleteOne(db, key: s.id) }
    }
}

/// A snapshot through this node's `archip serve`, for a volume it holds.
public enum NodeSnapshot {
    /// Takes `target` through the daemon in `runtimeDir` when it serves
    /// `source`; false when it does not (no daemon, or not attached here).
    public static func take(_ source: VolumeName, as target: VolumeName, runtimeDir: String) throws -> Bool {
        do {
            guard let client = ControlClient.connect(runtimeDir: runtimeDir),
                  try client.call(ControlRequest(op: .list)).attachments?.contains(where: { $0.name == source.value }) == true else {
                return false
            }
            _ = try client.call(ControlRequest(op: .snapshot, name: source.value, snapshot: target.value))
            return true
        } catch let e as StoreError {
            throw CycladesError(.backend, "snapshot \(target) of \(source) through the node daemon in \(runtimeDir): \(e.description)")
        }
    }
}

import Foundation
import GRDB

extension Registry {
    /// Grows a volume (Cinder's os-extend): one Ganeti grow-disk job; the
    /// difference is charged (pending) now, accepted or rejected with the job.
    /// The volume is EXTENDING until the job ends.
    public func extendVolume(_ id: Int64, user userRef: String?, newSizeGB: Int) throws -> Volume {
        let (volume, server, backend, amount) = try db.write { db -> (Volume, Server, Backend, Int) in
            guard var v = try Volume.fetchOne(db, key: id) else { throw CycladesError.notFound("volume", id) }
            if let userRef, v.userid != (try findUserIn(db, userRef).id) { throw CycladesError.notFound("volume", id) }
            guard !v.deleted, let sid = v.machineID, v.index != nil else { throw CycladesError(.badRequest, "volume \(id) is not attached to a server") }
            guard v.status == .inUse else {
                throw CycladesError(.badRequest, "volume \(id) is \(v.status.rawValue); only IN_USE volumes can be extended")
            }
            guard newSizeGB > v.size else { throw CycladesError(.badRequest, "new size \(newSizeGB) GB must be larger than the current \(v.size) GB") }
            try checkSize(newSizeGB)
            let s = try ownedServer(db, sid, nil)
            try checkServerAcceptsChanges(s)
            try checkNoJobInFlight(db, s)
            let delta = Int64(newSizeGB - v.size) << 30
            _ = try charge(db, project: v.project, delta: delta, serverID: sid, volumeIDs: [id])
            v.status = .extending
            v.pendingSize = newSizeGB
            // The last job (the create) has ended: a settler must not take it for this one.
            v.backendJobID = nil
            v.updated = now()
            try v.update(db)
            return (v, s, try backendOf(db, s), (newSizeGB - v.size) * 1024)
        }
        _ = try send(serverID: nil, volumeIDs: [id], failing: .volumeExtend) {
            // Ganeti renumbers disks after a removal: ask it for this disk's index by name.
            let ganeti = backendClient(backend)
            let index = try ganeti.instanceDisks(server.instanceName)?.disks.first { $0.name == volume.diskName }?.index ?? volume.index!
            return try ganeti.growDisk(instance: server.instanceName, index: index, amountMiB: amount)
        }
        return try db.read { db in try Volume.fetchOne(db, key: id)! }
    }
}
